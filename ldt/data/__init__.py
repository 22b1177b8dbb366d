"""Importing this package registers every `*_dataset.py` module in it into basicsr's registry, and makes basicsr's
own PairedImageDataset name an image it cannot decode (``ldt.compat.patch_paired_image_dataset``)."""

from ldt.compat import import_registered_modules, patch_paired_image_dataset

registered_modules = import_registered_modules(__name__, __file__, "_dataset")
patch_paired_image_dataset()
