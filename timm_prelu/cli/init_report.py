"""`timm-prelu init-report MODEL`: which rectifier each layer's He init used, and the response / gradient std per
layer after He and Xavier init (the paper's section 2.2), as a table and a log-scale plot."""
import argparse

from ._args import add_model_source_args, check_output, describe_labels, parse_model_kwargs, resolve_from_args

# Why He's std may still fall over a deep narrow net (a table reader's first question); derived in docs/init.md.
FACTOR_NOTE = ("note: He makes each layer's variance factor 1 only in expectation; at finite width the factors are "
               "random, and a product of random factors with mean 1 typically drifts below 1 (faster the fewer the "
               "channels), so a slow fall of He's std over many narrow layers is expected, unlike Xavier's 1/2 per "
               "layer; see docs/init.md ('Checking it')")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'init-report', help='per-layer std of responses and gradients after He / Xavier init',
        description='Initialise MODEL with each rule, push one random batch through it and report, per conv / fc '
                    'layer, the std of its responses (forward) and of their gradients (backward).')
    p.add_argument('model', metavar='MODEL',
                   help='a timm model name (e.g. vgg19, prelu_model_a), a checkpoint, hub id or hub folder (its '
                        'architecture; the weights are re-initialised), or plainN (e.g. plain30: the plain N-layer '
                        'ReLU net of `timm-prelu reproduce depth`)')
    p.add_argument('--init', nargs='+', choices=('he', 'xavier'), default=['he', 'xavier'],
                   help='init rules to compare (default: both)')
    p.add_argument('--mode', choices=('fan_in', 'fan_out'), default='fan_in',
                   help="He: forward case n = k^2 c ('fan_in') or backward case n = k^2 d ('fan_out')")
    p.add_argument('--xavier-mode', choices=('avg', 'fan_in', 'fan_out'), default='avg',
                   help="Xavier: Glorot's 2 / (n_in + n_out) ('avg') or the paper's n Var[w] = 1 ('fan_in')")
    p.add_argument('--strict-first-layer', action='store_true',
                   help='He: n Var[w] = 1 for the first layer instead of keeping the 1/2 factor')
    p.add_argument('--img-size', type=int, default=None, help="input side (default: the model's configured size)")
    p.add_argument('--batch-size', type=int, default=8, help='images in the probe batch (default: 8)')
    p.add_argument('--seed', type=int, default=0, help='seed of the weights, the batch and the output gradient')
    add_model_source_args(p, pretrained=False)
    p.add_argument('--depth-plot', metavar='PNG', default=None,
                   help='also write the std per layer, one line per rule, to this PNG')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the --depth-plot file if timm-prelu wrote it (never a file it did not write)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    import torch
    from ..errors import ConfigError, ModelSourceError
    from ..init.plain_net import create_plain_net, is_plain_net_name
    from ..init.probe import format_probe_table, plot_probe, probe_rule
    if args.depth_plot:
        check_output(args.depth_plot, '--depth-plot', kind='file', overwrite=args.overwrite)
    if args.batch_size < 1:
        raise ConfigError(f'--batch-size must be at least 1, got {args.batch_size}')
    if is_plain_net_name(args.model):
        model_kwargs = parse_model_kwargs(args.model_kwargs)
        if args.img_size is not None:
            model_kwargs.setdefault('img_size', args.img_size)  # a plain net's fc1 is sized for its input
        model = create_plain_net(args.model, **model_kwargs)
    else:
        try:
            resolved = resolve_from_args(args, args.model)
        except ModelSourceError as e:
            if str(e).startswith('unknown model'):
                raise ModelSourceError(f'{e}; or plainN (e.g. plain30) for the plain N-layer ReLU net',
                                       param=e.param) from e
            raise
        model = resolved.model
        print(f'{resolved.model_name} from {resolved.provenance.kind}: {describe_labels(resolved.label_names)}')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    chans, height, width = cfg.get('input_size', (3, 224, 224))
    if args.img_size is not None:
        height = width = args.img_size
    x = torch.randn(args.batch_size, chans, height, width, generator=torch.Generator().manual_seed(args.seed))
    kwargs = {'he': {'mode': args.mode, 'strict_first_layer': args.strict_first_layer, 'example_input': x[:1]},
              'xavier': {'mode': args.xavier_mode}}
    results = {}
    for rule in args.init:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the He table lists the unmatched layers
            report, results[rule] = probe_rule(model, x, rule, args.seed, **kwargs[rule])
        if rule == 'he':
            print(report.format_table() + '\n')
    print(f'{args.model}: std per layer for a batch of {args.batch_size} x {chans} x {height} x {width} N(0, 1) '
          f'images and an N(0, 1) output gradient')
    print(format_probe_table(results))
    if 'he' in results:
        print(FACTOR_NOTE)
    if args.depth_plot:
        path = plot_probe(results, args.depth_plot, title=f'{args.model}: std per layer at init')
        print(f'plot: {path}')
    return 0
