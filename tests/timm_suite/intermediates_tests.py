"""timm's module-selected feature tests (forward_intermediates, FeatureGetterNet, prune contract), run on our models.

test_models.py picks these models with ``list_models(module=[...timm's own module names...])``, a fixed list that
cannot include a plugin's modules; the test bodies below are timm's own functions, called unchanged.
"""
import pytest
import test_models as timm_tests  # timm's tests/test_models.py (run.py puts it on sys.path)

import timm_sknet

OUR_MODELS = timm_sknet.model_names()


@pytest.mark.parametrize('model_name', OUR_MODELS)
def test_forward_intermediates_features(model_name):
    timm_tests.test_model_forward_intermediates_features(model_name, batch_size=1)


@pytest.mark.parametrize('model_name', OUR_MODELS)
def test_forward_intermediates(model_name):
    timm_tests.test_model_forward_intermediates(model_name, batch_size=1)


@pytest.mark.parametrize('model_name', OUR_MODELS)
def test_prune_intermediate_layers_contract(model_name):
    timm_tests.test_prune_intermediate_layers_contract(model_name)
