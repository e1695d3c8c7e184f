"""`timm-prelu export-onnx`: a PReLU-net to ONNX (dynamic batch / height / width, timm config in the metadata)."""
import argparse
import functools
from pathlib import Path

from ._args import add_model_source_args, check_output, parse_model_kwargs, resolve_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'export-onnx', help='export a PReLU-net to ONNX (dynamic batch/height/width; --split for dense views)',
        description='Export one ONNX graph with dynamic batch, height and width, checked with onnx.checker and '
                    'verified against PyTorch, with timm\'s pretrained_cfg and the weights\' source in its metadata. '
                    '--split also writes NAME.backbone.onnx and NAME.head.onnx for dense multi-view inference.',
        epilog='examples: timm-prelu export-onnx output/train/run/model_best.pth.tar -o run.onnx --split\n'
               '          timm-prelu export-onnx hf-hub:ORG/prelu_model_c -o c.int8.onnx --int8 --calibrate val/\n'
               '          timm-prelu export-onnx local-dir:hub_folder -o c.protocol.onnx --protocol dense '
               '--scales 256 384 480',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', metavar='MODEL_OR_CHECKPOINT_OR_HUB_ID',
                   help='a timm model name, hf-hub:ORG/NAME[@REV], a hub-layout folder, or a train.py .pth.tar / '
                        '.safetensors checkpoint')
    p.add_argument('-o', '--output', required=True, metavar='FILE.onnx', help='the model graph to write')
    p.add_argument('--opset', type=int, default=None, metavar='N', help="ONNX opset (default: torch's default)")
    p.add_argument('--fp16', action='store_true', help='float16 weights and compute, float32 inputs/outputs')
    p.add_argument('--split', action='store_true', help='also write the backbone and head graphs (dense views)')
    p.add_argument('--int8', action='store_true',
                   help='int8 graph(s) for CPU serving: ONNX Runtime static quantization, calibrated on --calibrate')
    p.add_argument('--calibrate', default=None, metavar='FOLDER',
                   help='--int8: folder of calibration images like those the model will see (or an ImageFolder)')
    p.add_argument('--calibrate-count', type=int, default=None, metavar='N',
                   help='--int8: most calibration images used (default 64, taken evenly through the folder)')
    p.add_argument('--model', dest='model_name', default=None, metavar='NAME',
                   help='architecture of a checkpoint that does not record it')
    add_model_source_args(p)
    p.add_argument('--input-size', type=int, default=None, metavar='PX',
                   help='training image size, if not recorded (sets the centre crop and the dense window)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace existing output files, if timm-prelu exported them (never other files)')
    p.add_argument('--no-verify', dest='verify', action='store_false',
                   help='skip running each graph once in ONNX Runtime against PyTorch')
    g = p.add_argument_group('the whole test protocol in one graph (uint8 HxWx3 image in, probabilities out)')
    g.add_argument('--protocol', choices=('dense', 'ten_crop', 'full'), default=None,
                   help='write one graph that resizes, normalises, flips, runs these views and averages them')
    g.add_argument('--scales', type=int, nargs='+', default=[256, 384, 480], metavar='S',
                   help='shorter-side sizes of the protocol graph (default: 256 384 480)')
    g.add_argument('--no-flip', dest='flip', action='store_false', help='protocol graph: no horizontal flip')
    g.add_argument('--crop-size', type=int, default=None, metavar='PX',
                   help="protocol graph: the ten_crop crop and dense window in pixels (default: the model's input)")
    p.set_defaults(func=run)


def run_protocol(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..onnx_model.protocol import export_protocol
    if args.split or args.fp16:
        raise ConfigError('a protocol graph is one fp32 graph: drop --split / --fp16', param='protocol')
    check_output(args.output, '-o', kind='file', overwrite=args.overwrite,
                 inputs=[args.model if Path(args.model).exists() else None, args.labels])
    resolved = resolve_from_args(args, args.model, model_name=args.model_name)
    path = export_protocol(resolved.model, args.output, protocol=args.protocol, scales=args.scales, flip=args.flip,
                           crop_size=args.crop_size, label_names=resolved.label_names,
                           model_name=resolved.model_name, opset=args.opset, overwrite=args.overwrite)
    print(f'{resolved.model_name}: {args.protocol} views at scales {args.scales}, flip '
          f'{"on" if args.flip or args.protocol == "ten_crop" else "off"}; labels: '
          f'{"yes" if resolved.label_names else "none"}')
    print(f'wrote {path} (input "image": uint8 [height, width, 3]; output "probs": float32 [classes])')
    return 0


def run(args: argparse.Namespace) -> int:
    from ..onnx_model.export import export_onnx
    from ..errors import ConfigError
    if args.protocol and args.int8:
        raise ConfigError('a protocol graph is float32: export --int8 without --protocol', param='protocol')
    if args.protocol:
        return run_protocol(args)
    from ..onnx_model.runtime import read_metadata
    if (args.calibrate or args.calibrate_count is not None) and not args.int8:
        raise ConfigError('calibration images are for the int8 graph: add --int8', param='calibrate')
    if args.int8 and (not args.calibrate or args.fp16):
        raise ConfigError('an int8 graph is calibrated on images the model will see: give a folder of them (and '
                          'no --fp16)', param='calibrate')
    check_output(args.output, '-o', kind='onnx', split=args.split, overwrite=args.overwrite,
                 inputs=[args.model if Path(args.model).exists() else None, args.labels, args.calibrate])
    if args.int8:
        from ..onnx_model.quantize import DEFAULT_CALIBRATION_COUNT, export_int8
        export = functools.partial(export_int8, calibrate=args.calibrate,
                                   calibrate_count=DEFAULT_CALIBRATION_COUNT if args.calibrate_count is None
                                   else args.calibrate_count)
    else:
        export = functools.partial(export_onnx, fp16=args.fp16)
    result = export(
        args.model, args.output, opset=args.opset, split=args.split, model_name=args.model_name,
        model_kwargs=parse_model_kwargs(args.model_kwargs), num_classes=args.num_classes,
        pretrained=args.pretrained, label_names=args.labels, input_size=args.input_size, verify=args.verify,
        use_ema=args.use_ema, overwrite=args.overwrite, progress=lambda line: print(f'export: {line}', flush=True))
    info = read_metadata(result.model)
    cfg = info['pretrained_cfg']
    source = info['source']
    print(f'{info["model_name"]} ({info["num_classes"]} classes, {info["dtype"]}, opset {info["opset"]}) '
          f'from {source["kind"]}' + (f' {source.get("file") or source.get("repo_id")}' if source.get('file')
                                       or source.get('repo_id') else ''))
    print(f'input {cfg["input_size"][1]}x{cfg["input_size"][2]}, mean {cfg["mean"]}, std {cfg["std"]}, '
          f'{cfg["interpolation"]}; labels: {"yes" if cfg.get("label_names") else "none"}')
    if args.int8:
        q = info['quantization']
        print(f'int8 (QDQ): weights {q["weights"]}, activations {q["activations"]} on {info["calibration_count"]} '
              f'image(s) from {args.calibrate}' + (f' ({info["calibration_skipped"]} unreadable, skipped)'
                                                    if info['calibration_skipped'] else '')
              + f'; {q["prelu_as_leaky_relu"]} single-slope PReLU(s) run as int8 LeakyRelu')
    for path in result.paths:
        print(f'wrote {path}')
    if result.parity:
        measured = ', '.join(f'{graph} {err:.2e}' for graph, err in result.parity.items())
        which = 'the float graphs quantized' if args.int8 else 'each graph'
        print(f'parity: max |ONNX Runtime - PyTorch| of {which} on a random batch: {measured}')
    else:
        print('parity: not checked (--no-verify)')
    return 0
