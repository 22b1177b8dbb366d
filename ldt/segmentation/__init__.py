"""Domain-generalised semantic segmentation (paper Table 8): Cityscapes / BDD100K / Mapillary readers, a generated
multi-domain street dataset, DeepLabV3+ on ResNet-18/50, mIoU and sliding-window inference, and the runner
(``python -m ldt.segmentation``: train on source domains, select on their held-out part, test on target domains).

The pieces are independent of BasicSR and of the other tasks; see each module's docstring.
"""

from ldt import lazy_exports

# Each name is imported from its module on first use, so that `python -m ldt.segmentation` starts cheaply.
_EXPORTS = {
    "ldt.segmentation.classes": ("CLASS_NAMES", "IGNORE_INDEX", "MAPILLARY_V12_CLASSES", "MAPILLARY_V12_TO_TRAIN_ID",
        "NUM_CLASSES", "colorize", "lookup_table"),
    "ldt.segmentation.data": ("LAYOUTS", "Augment", "SegmentationDataError", "SegmentationDataset",
        "SegmentationSplit", "eval_loader", "scan_split", "split_holdout", "training_loader"),
    "ldt.segmentation.deeplabv3plus": ("BACKBONES", "HEAD_PATTERNS", "DeepLabV3Plus", "head_parameter_names",
        "load_backbone_weights"),
    "ldt.segmentation.generated": ("DOMAINS", "PRETRAIN_DOMAIN", "SOURCE_DOMAIN", "GeneratedConfig",
        "build_generated", "domain_root"),
    "ldt.segmentation.inference": ("predict_sliding", "predict_whole", "window_positions"),
    "ldt.segmentation.metrics": ("ConfusionMatrix", "confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy"),
    "ldt.segmentation.pretrain": ("PretrainConfig", "pretrain_backbone"),
    "ldt.segmentation.records": ("build_table", "sweep_records", "write_tables"),
    "ldt.segmentation.train": ("METHODS", "Domain", "RunConfig", "parse_domain", "run"),
    "ldt.weights": ("WeightsError",),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
