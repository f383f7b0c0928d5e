"""Model: the inference network (backbone, decoder, heads, parser) and training-only SST modules and losses.

Training loop entry points::

    parser_cfg = ParserConfig(backbone="resnet50", output_stride=16)
    model = build_sst_model(parser_cfg, domains, SSTConfig(), SSTLossWeights(lambda_mse=0.1, lambda_mst=0.1))
    out = model(images, labels, domain_idx)     # domain_idx indexes model.domain_names
    out["loss"].backward()
    exported = inference_model(model)           # plain HumanParser, no SST parameters or FLOPs
"""

from sstparse.model.backbone import ResNet, build_backbone, load_backbone_weights
from sstparse.model.decoder import ASPP, DeepLabDecoder
from sstparse.model.heads import DomainHeads
from sstparse.model.losses import SSTLossWeights
from sstparse.model.parser import HumanParser, ParserConfig, ParserFeatures, build_parser
from sstparse.model.sst import MSA, MSE, MST, SSTConfig, SSTModel, SSTModules, build_sst_model, inference_model

__all__ = [
    "ASPP", "DeepLabDecoder", "DomainHeads", "HumanParser", "MSA", "MSE", "MST", "ParserConfig", "ParserFeatures",
    "ResNet", "SSTConfig", "SSTLossWeights", "SSTModel", "SSTModules", "build_backbone", "build_parser",
    "build_sst_model", "inference_model", "load_backbone_weights",
]
