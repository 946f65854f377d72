import pytest
import torch

from skaudiocluster.cluster._heads import HeadCosineLinear, HeadLinear, MultiHead, copy_head


@pytest.mark.parametrize("cosine_last_layer", [False, True])
def test_copy_head_computes_what_the_copied_head_computes(cosine_last_layer):
    torch.manual_seed(0)
    kwargs = {"hidden_dims": (8, 8), "bottleneck_dim": 4, "cosine_last_layer": cosine_last_layer}
    heads = MultiHead(6, n_clusters=3, n_heads=4, **kwargs)
    x = torch.randn(5, 6)
    single = copy_head(heads, 2, **kwargs)
    assert single.n_heads == 1
    before = heads(x).detach()
    torch.testing.assert_close(single(x)[0], before[2])
    for parameter in single.parameters():  # a copy: the source head is untouched
        parameter.data.add_(1.0)
    torch.testing.assert_close(heads(x), before)


def test_head_linear_applies_each_heads_own_affine_map():
    torch.manual_seed(0)
    layer = HeadLinear(3, in_features=4, out_features=2)
    with torch.no_grad():
        layer.bias.normal_()
    shared, per_head = torch.randn(5, 4), torch.randn(3, 5, 4)
    for h in range(3):
        weight, bias = layer.weight[h], layer.bias[h]
        torch.testing.assert_close(layer(shared)[h], shared @ weight + bias)
        torch.testing.assert_close(layer(per_head)[h], per_head[h] @ weight + bias)


def test_changing_one_head_leaves_the_others_alone():
    torch.manual_seed(0)
    heads = MultiHead(
        6, n_clusters=3, n_heads=3, hidden_dims=(8,), bottleneck_dim=4, cosine_last_layer=True
    )
    x = torch.randn(5, 6)
    before = heads(x).detach()
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter[1].add_(1.0)
    after = heads(x).detach()
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    assert not torch.allclose(after[1], before[1])


def test_cosine_last_layer_gives_cosines_times_the_magnitude():
    torch.manual_seed(0)
    layer = HeadCosineLinear(2, in_features=4, out_features=3)
    with torch.no_grad():
        layer.magnitude.mul_(torch.tensor([2.0, 3.0, 4.0]))
    x = torch.randn(2, 5, 4)
    directions = torch.nn.functional.normalize(layer.direction, dim=1)
    cosines = torch.bmm(torch.nn.functional.normalize(x, dim=-1), directions)
    torch.testing.assert_close(layer(x), cosines * torch.tensor([2.0, 3.0, 4.0]))
