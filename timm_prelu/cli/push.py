"""`timm-prelu push`: publish a train.py checkpoint on the Hugging Face Hub in timm's layout (one commit)."""
import argparse
from pathlib import Path

from ._args import add_model_source_args, check_output, parse_model_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        'push', help='publish a train.py checkpoint on the Hugging Face Hub (timm layout, one commit)',
        description='Publish a checkpoint written by timm train.py (or a .safetensors file, a hub folder) as a timm '
                    'model repo: config.json, model.safetensors, README.md model card [, model.onnx]. A summary of '
                    'the files, label names and metrics is printed before anything is uploaded.')
    p.add_argument('checkpoint', metavar='CHECKPOINT',
                   help='checkpoint-*.pth.tar / model_best.pth.tar / last.pth.tar from train.py, a .safetensors '
                        'file, or a hub-layout folder')
    p.add_argument('--repo-id', required=True, metavar='ORG/NAME', help='Hub repo, e.g. timm-prelu/prelu_model_c.in1k')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--revision', default='main', help='branch to commit to (created if missing; default: main)')
    p.add_argument('--token', default=None, help='Hub token (default: HF_TOKEN or the `hf auth login` token)')
    p.add_argument('--onnx', action='store_true', help='also export model.onnx (needs timm-prelu[onnx])')
    p.add_argument('--dry-run', metavar='OUT_DIR', default=None, help='write the repo folder here, upload nothing')
    p.add_argument('--overwrite', action='store_true',
                   help='replace the --dry-run folder if timm-prelu wrote it (never a folder it did not write)')
    p.add_argument('--model', default=None, help='architecture, if the checkpoint does not record it')
    add_model_source_args(p, pretrained=False)
    p.add_argument('--dataset', default=None, help='dataset name for the model card (default: from the train args)')
    p.add_argument('--license', default='apache-2.0', help='license of the weights (default: apache-2.0)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import build_hub_folder, push_checkpoint
    if args.dry_run:
        check_output(args.dry_run, '--dry-run', overwrite=args.overwrite,
                     inputs=[args.checkpoint if Path(args.checkpoint).exists() else None, args.labels])
    common = dict(use_ema=args.use_ema, model_name=args.model, model_kwargs=parse_model_kwargs(args.model_kwargs),
                  num_classes=args.num_classes, label_names=args.labels, dataset=args.dataset,
                  license=args.license, onnx=args.onnx, show=print)
    if args.dry_run:
        folder = build_hub_folder(args.checkpoint, args.dry_run, args.repo_id, overwrite=args.overwrite, **common)
        print(f'wrote {folder}; nothing uploaded')
        return 0
    url = push_checkpoint(args.checkpoint, args.repo_id, revision=args.revision, private=args.private,
                          token=args.token, **common)
    print(f'pushed {args.repo_id} ({args.revision}): {url}')
    return 0
