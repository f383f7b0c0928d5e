"""Model: the inference network (backbone, decoder, heads, parser) and training-only SST modules and losses.

Modules, not re-exports (importing this package imports nothing, so ``sstparse.model.config`` stays torch-free):
``config`` (ParserConfig, SSTConfig), ``parser`` (HumanParser, build_parser), ``sst`` (MSA, MSE,
MST, SSTModel, build_sst_model, inference_model), ``losses``, ``backbone``, ``decoder``, ``heads``, ``stats``.
The training loop's calls::

    parser_cfg = ParserConfig(backbone="resnet50", output_stride=16)
    model = build_sst_model(parser_cfg, domains, SSTConfig(lambda_mse=0.1, lambda_mst=0.1))
    out = model(images, labels, domain_idx)     # domain_idx indexes model.domain_names
    out["loss"].backward()
    exported = inference_model(model)           # plain HumanParser, no SST parameters or FLOPs
"""
