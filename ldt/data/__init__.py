"""Importing this package registers every `*_dataset.py` module in it into basicsr's registry."""

from ldt.compat import import_registered_modules

registered_modules = import_registered_modules(__name__, __file__, "_dataset")
