"""kfaclab: the library behind the executable textbook on large-batch second-order optimization.

Data flows one way: spec -> sweep -> train -> metrics JSON -> results -> plots -> book.
"""

__version__ = "0.1.0"
