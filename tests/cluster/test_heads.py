import torch

from skaudiocluster.cluster._heads import MultiHead, copy_head


def test_copy_head_computes_what_the_copied_head_computes():
    torch.manual_seed(0)
    heads = MultiHead(6, n_clusters=3, n_heads=4, hidden_dims=(8,), batch_norm=True).eval()
    x = torch.randn(5, 6)
    single = copy_head(heads, 2, hidden_dims=(8,), batch_norm=True).eval()
    assert single.n_heads == 1
    torch.testing.assert_close(single(x)[0], heads(x)[2])
    single.last_layer.weight.data.zero_()  # a copy: the source head is untouched
    assert heads.last_layer.weight.abs().sum() > 0
