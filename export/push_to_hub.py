"""Publish a train.py checkpoint on the Hugging Face Hub: the same as `timm-prelu push`.

    python export/push_to_hub.py OUTPUT/EXPERIMENT/model_best.pth.tar --repo-id ORG/NAME [--dry-run OUT_DIR]
"""
import sys

from timm_prelu.cli import main

if __name__ == '__main__':
    sys.exit(main(['push', *sys.argv[1:]]))
