"""Importing this package registers every `*_dataset.py` module in it into basicsr's registry, and makes basicsr's
own PairedImageDataset and SingleImageDataset name an image they cannot decode (``ldt.compat.patch_image_datasets``)."""

from ldt.compat import import_registered_modules, patch_image_datasets

registered_modules = import_registered_modules(__name__, __file__, "_dataset")
patch_image_datasets()
