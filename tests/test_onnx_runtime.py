"""OnnxModel: one session with our metadata; provider selection; clear errors for files and providers."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from timm_prelu.errors import InputSizeError
from timm_prelu.onnx_model.runtime import METADATA_KEY, OnnxModel, OnnxModelError, read_metadata, select_providers

from conftest import ONNX_LABELS as LABELS
HAS_CUDA_PROVIDER = 'CUDAExecutionProvider' in ort.get_available_providers()


def test_select_providers():
    assert select_providers('auto', available=['CPUExecutionProvider']) == ['CPUExecutionProvider']
    assert select_providers('auto', available=['CUDAExecutionProvider', 'CPUExecutionProvider']) == \
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
    assert select_providers('cpu', available=['CUDAExecutionProvider', 'CPUExecutionProvider']) == \
        ['CPUExecutionProvider']
    assert select_providers('CUDA', available=['CUDAExecutionProvider', 'CPUExecutionProvider']) == \
        ['CUDAExecutionProvider', 'CPUExecutionProvider']
    with pytest.raises(OnnxModelError, match='CUDAExecutionProvider is not installed.*onnxruntime-gpu'):
        select_providers('cuda', available=['CPUExecutionProvider'])
    with pytest.raises(OnnxModelError, match='TensorrtExecutionProvider is not installed'):
        select_providers(['TensorrtExecutionProvider'], available=['CPUExecutionProvider'])
    with pytest.raises(OnnxModelError, match="unknown provider 'tpu'"):
        select_providers('tpu')


def test_runs_and_matches_pytorch_from_numpy_and_torch(exported):
    model, path = exported
    session = OnnxModel(path, providers='cpu', threads=1)
    assert session.provider == 'CPUExecutionProvider' and 'CPUExecutionProvider' in session.describe()
    assert session.graph == 'model' and session.num_classes == 10 and session.label_names == LABELS
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(session.run(x.numpy()) - ref).max() <= 1e-4
    assert np.abs(session.run(x) - ref).max() <= 1e-4
    assert np.abs(session.run(x.double().numpy()) - ref).max() <= 1e-4  # converted to float32


def test_auto_provider_says_what_it_uses(exported):
    session = OnnxModel(exported[1], providers='auto', threads=1)
    assert session.provider == ('CUDAExecutionProvider' if HAS_CUDA_PROVIDER else 'CPUExecutionProvider')
    assert session.uses_cuda == HAS_CUDA_PROVIDER


def test_cuda_provider_request(exported):
    if HAS_CUDA_PROVIDER:
        assert OnnxModel(exported[1], providers='cuda').provider == 'CUDAExecutionProvider'
    else:
        with pytest.raises(OnnxModelError, match='CUDAExecutionProvider is not installed'):
            OnnxModel(exported[1], providers='cuda')


@pytest.mark.skipif(not (HAS_CUDA_PROVIDER and torch.cuda.is_available()), reason='needs a GPU and onnxruntime-gpu')
def test_cuda_io_binding_reads_torch_cuda_tensors(exported):
    model, path = exported
    session = OnnxModel(path, providers='cuda')
    x = torch.randn(3, 3, 97, 131)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(session.run(x.cuda()) - ref).max() <= 1e-3
    assert np.abs(session.run(x.numpy()) - ref).max() <= 1e-3


def test_input_checks(exported):
    session = OnnxModel(exported[1], providers='cpu', threads=1)
    with pytest.raises(InputSizeError, match='at least 15'):
        session.run(np.zeros((1, 3, 14, 40), np.float32))
    with pytest.raises(InputSizeError, match='takes 3 channels'):
        session.run(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(InputSizeError, match='takes 3 channels'):
        session.run(np.zeros((1, 4, 32, 32), np.float32))  # RGBA: load_image drops the alpha first
    with pytest.raises(InputSizeError, match='NCHW'):
        session.run(np.zeros((3, 32, 32), np.float32))
    assert issubclass(InputSizeError, ValueError)


def test_missing_and_corrupt_files(exported, tmp_path):
    with pytest.raises(OnnxModelError, match='no such ONNX file'):
        OnnxModel(tmp_path / 'missing.onnx')
    (tmp_path / 'garbage.onnx').write_bytes(b'\x00\x01 this is not a protobuf' * 10)
    with pytest.raises(OnnxModelError, match='not a valid ONNX model'):
        OnnxModel(tmp_path / 'garbage.onnx')
    data = exported[1].read_bytes()
    (tmp_path / 'truncated.onnx').write_bytes(data[:len(data) // 2])
    with pytest.raises(OnnxModelError, match='not a valid ONNX'):
        OnnxModel(tmp_path / 'truncated.onnx')
    with pytest.raises(OnnxModelError, match='not a valid ONNX file'):
        read_metadata(tmp_path / 'truncated.onnx')


def test_onnx_file_that_is_not_ours(tmp_path):
    node = helper.make_node('Relu', ['image'], ['logits'])
    graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info('image', TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)]), tmp_path / 'other.onnx')
    with pytest.raises(OnnxModelError, match='no timm-prelu metadata.*export-onnx'):
        OnnxModel(tmp_path / 'other.onnx')
    with pytest.raises(OnnxModelError, match='no timm-prelu metadata'):
        read_metadata(tmp_path / 'other.onnx')


def test_metadata_from_another_version_or_broken(exported, tmp_path):
    proto = onnx.load(str(exported[1]))
    props = {p.key: p.value for p in proto.metadata_props}
    for value, match in ((json.dumps({**json.loads(props[METADATA_KEY]), 'format': 99}), 'format 99'),
                         ('{not json', 'not valid JSON')):
        helper.set_model_props(proto, {**props, METADATA_KEY: value})
        onnx.save(proto, tmp_path / 'x.onnx')
        with pytest.raises(OnnxModelError, match=match):
            OnnxModel(tmp_path / 'x.onnx')
