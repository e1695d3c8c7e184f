#!/usr/bin/env python3
"""Export a PReLU-net to ONNX; the same as `timm-prelu export-onnx` (see --help).

    python export/export_onnx.py prelu_model_c.in1k --pretrained -o c.onnx --split
"""
import sys

from timm_prelu.cli import main

if __name__ == '__main__':
    sys.exit(main(['export-onnx', *sys.argv[1:]]))
