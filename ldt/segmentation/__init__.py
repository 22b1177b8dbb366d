"""Domain-generalised semantic segmentation (paper Table 8): Cityscapes / BDD100K / Mapillary readers, a generated
multi-domain street dataset, DeepLabV3+ on ResNet-18/50, mIoU and sliding-window inference.

The pieces are independent of BasicSR and of the other tasks; see each module's docstring.
"""

from ldt.segmentation.classes import (
    CLASS_NAMES, IGNORE_INDEX, MAPILLARY_V12_CLASSES, MAPILLARY_V12_TO_TRAIN_ID, NUM_CLASSES, colorize, lookup_table,
)
from ldt.segmentation.data import (
    LAYOUTS, Augment, SegmentationDataError, SegmentationDataset, SegmentationSplit, TrainingSampler, eval_loader,
    scan_split, split_holdout, training_loader,
)
from ldt.segmentation.deeplabv3plus import (
    BACKBONES, HEAD_PATTERNS, DeepLabV3Plus, WeightsError, head_parameter_names, load_backbone_weights,
)
from ldt.segmentation.generated import DOMAINS, PRETRAIN_DOMAIN, SOURCE_DOMAIN, GeneratedConfig, build_generated, domain_root
from ldt.segmentation.inference import predict_sliding, predict_whole, window_positions
from ldt.segmentation.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

__all__ = [
    "Augment", "BACKBONES", "CLASS_NAMES", "ConfusionMatrix", "DOMAINS", "DeepLabV3Plus", "GeneratedConfig",
    "HEAD_PATTERNS", "IGNORE_INDEX", "LAYOUTS", "MAPILLARY_V12_CLASSES", "MAPILLARY_V12_TO_TRAIN_ID", "NUM_CLASSES",
    "PRETRAIN_DOMAIN", "SOURCE_DOMAIN", "SegmentationDataError", "SegmentationDataset", "SegmentationSplit",
    "TrainingSampler", "WeightsError", "build_generated", "colorize", "confusion_matrix", "domain_root", "eval_loader",
    "head_parameter_names", "iou_per_class", "load_backbone_weights", "lookup_table", "mean_iou", "pixel_accuracy",
    "predict_sliding", "predict_whole", "scan_split", "split_holdout", "training_loader", "window_positions",
]
