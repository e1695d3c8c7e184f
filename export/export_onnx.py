#!/usr/bin/env python3
"""Export a PReLU-net to ONNX; the same as `timm-prelu export-onnx` (see --help).

    python export/export_onnx.py output/train/EXPERIMENT/model_best.pth.tar -o model.onnx --split
"""
import sys

from timm_prelu.cli import main

if __name__ == '__main__':
    sys.exit(main(['export-onnx', *sys.argv[1:]]))
