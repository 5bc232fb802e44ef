#!/usr/bin/env bash
# The working tree a GPU window sends, cut to what the harvest needs, and put back afterwards.
#
# The device tool sends the checkout's tracked and untracked-not-ignored files, at most 64 MiB
# with the carried wheels and data; the committed run records under runs/ are far more than that
# (155 MB on 2026-12-04). A harvest needs only its own study's folder. So, before the window:
#   bash scripts/gpu-tree.sh cut runs/gpu     # keeps runs/<that study> and runs/README.md
# takes every other folder under runs/ out of git's index (the files stay on disk, untouched) and
# ignores them in .git/info/exclude, then prints the size that will travel; after the window:
#   bash scripts/gpu-tree.sh restore          # the index as HEAD has it, the exclude as it was
# Nothing is committed while the tree is cut: `cut` refuses a tree with staged changes, and
# `restore` is safe to run twice or after a crash (it only resets the index and drops its lines).
set -euo pipefail
cd "$(dirname "$0")/.."
MARK="# gpu-tree.sh: cut for a GPU window (scripts/gpu-tree.sh restore puts it back)"
EXCLUDE=$(git rev-parse --git-path info/exclude)
LIMIT=$((64 * 1024 * 1024))

usage() { echo "usage: bash scripts/gpu-tree.sh cut runs/<study> | restore | size" >&2; exit 2; }

size() {  # bytes that travel: tracked and untracked-not-ignored files, and .whl and .data if present
    local total
    total=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null \
             | tail -1 | cut -f1)
    for carried in .whl .data; do
        if [ -d "$carried" ]; then total=$((total + $(du -sb "$carried" | cut -f1))); fi
    done
    echo "$total"
}

restore() {
    git reset -q
    if [ -f "$EXCLUDE" ] && grep -qF "$MARK" "$EXCLUDE"; then
        # drop the mark and every line after it (cut writes them last)
        awk -v mark="$MARK" '$0 == mark {exit} {print}' "$EXCLUDE" > "$EXCLUDE.tmp" && mv "$EXCLUDE.tmp" "$EXCLUDE"
    fi
    echo "gpu-tree: index and exclude restored; $(size) bytes would travel"
}

case "${1:-}" in
    cut)
        study=${2:-}
        study=${study%/}
        [ -n "$study" ] && [ -f "$study/study.yaml" ] && [[ "$study" == runs/* ]] \
            || { echo "gpu-tree: give the study folder the window harvests, e.g. runs/gpu" >&2; exit 2; }
        if [ -f "$EXCLUDE" ] && grep -qF "$MARK" "$EXCLUDE"; then
            echo "gpu-tree: the tree is already cut; run 'bash scripts/gpu-tree.sh restore' first" >&2; exit 2
        fi
        git diff --cached --quiet || { echo "gpu-tree: the index has staged changes; commit or unstage them first" >&2
                                       exit 2; }
        mkdir -p "$(dirname "$EXCLUDE")"
        echo "$MARK" >> "$EXCLUDE"
        for d in runs/*/; do
            d=${d%/}
            [ "$d" = "$study" ] && continue
            git rm -r -q --cached --ignore-unmatch "$d"
            echo "/$d/" >> "$EXCLUDE"
        done
        n=$(size)
        echo "gpu-tree: cut to $study; $n bytes would travel (limit $LIMIT)"
        if [ "$n" -gt "$LIMIT" ]; then
            restore
            echo "gpu-tree: still over the device tool's 64 MiB; nothing was left cut" >&2
            exit 1
        fi
        ;;
    restore) restore ;;
    size) echo "$(size) bytes would travel (limit $LIMIT)" ;;
    *) usage ;;
esac
