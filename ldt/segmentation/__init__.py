"""Domain-generalised semantic segmentation (paper Table 8): Cityscapes / BDD100K / Mapillary readers, a generated
multi-domain street dataset, DeepLabV3+ on ResNet-18/50, mIoU and sliding-window inference, and the runner
(``python -m ldt.segmentation``: train on source domains, select on their held-out part, test on target domains).

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
    BACKBONES, HEAD_PATTERNS, DeepLabV3Plus, head_parameter_names, load_backbone_weights,
)
from ldt.segmentation.generated import DOMAINS, PRETRAIN_DOMAIN, SOURCE_DOMAIN, GeneratedConfig, build_generated, domain_root
from ldt.segmentation.inference import predict_sliding, predict_whole, window_positions
from ldt.segmentation.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from ldt.segmentation.pretrain import PretrainConfig, pretrain_backbone
from ldt.segmentation.records import build_table, sweep_records, write_tables
from ldt.segmentation.train import METHODS, Domain, RunConfig, parse_domain, run
from ldt.weights import WeightsError

__all__ = [
    "Augment", "BACKBONES", "CLASS_NAMES", "ConfusionMatrix", "DOMAINS", "DeepLabV3Plus", "Domain", "GeneratedConfig",
    "HEAD_PATTERNS", "IGNORE_INDEX", "LAYOUTS", "MAPILLARY_V12_CLASSES", "MAPILLARY_V12_TO_TRAIN_ID", "METHODS",
    "NUM_CLASSES", "PRETRAIN_DOMAIN", "PretrainConfig", "RunConfig", "SOURCE_DOMAIN", "SegmentationDataError",
    "SegmentationDataset", "SegmentationSplit", "TrainingSampler", "WeightsError", "build_generated", "build_table",
    "colorize", "confusion_matrix", "domain_root", "eval_loader", "head_parameter_names", "iou_per_class",
    "load_backbone_weights", "lookup_table", "mean_iou", "parse_domain", "pixel_accuracy", "predict_sliding",
    "predict_whole", "pretrain_backbone", "run", "scan_split", "split_holdout", "sweep_records", "training_loader",
    "window_positions", "write_tables",
]
