import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pocketnas
from pocketnas.config import ConfigError
from pocketnas.data import orl_root
from pocketnas.genotype import Genotype
from pocketnas.engine.search import Searcher, search, search_config, stratified_split
from pocketnas.nas.space import SearchSpaceError, load_space
from pocketnas.nas.supernet import Supernet, channel_shuffle, count_skips, derive_genotype

from conftest import REPO

TINY = ["layers=4", "channels=4", "input_size=32", "batch_size=16", "max_batches_per_epoch=2", "workers=0",
        "threads=1", "epochs=2", "log_every=1", "order=first"]


def tiny(*extra, space="pocketnet"):
    return search_config(space, None, TINY + list(extra), {"data": orl_root()})


def test_space_files_validate(tmp_path):
    for name in ("pocketnet", "darts"):
        space = load_space(os.path.join(REPO, "search_spaces", f"{name}.yaml"))
        assert len(space.operations) == 8 and space.nodes == 4 and space.edges_per_cell == 14
    (tmp_path / "bad.yaml").write_text("name: x\noperations: [max_pool_3x3, dw_conv_9x9]\n")
    with pytest.raises(SearchSpaceError, match=r"bad.yaml: operations\[1\]: unknown operation 'dw_conv_9x9'"):
        load_space(str(tmp_path / "bad.yaml"))
    (tmp_path / "key.yaml").write_text("name: x\noperations: [max_pool_3x3]\nnode: 3\n")
    with pytest.raises(SearchSpaceError, match="key.yaml: unknown key 'node'; did you mean nodes"):
        load_space(str(tmp_path / "key.yaml"))


def test_stratified_split_by_identity():
    labels = torch.arange(40).repeat_interleave(10).numpy()
    train, val = stratified_split(labels, 0.5, seed=0)
    assert len(train) == len(val) == 200 and not set(train) & set(val)
    assert all((labels[train] == c).sum() == 5 for c in range(40))
    assert stratified_split(labels, 0.5, seed=0) == (train, val) != stratified_split(labels, 0.5, seed=1)


def test_skipping_none_is_exact():
    space = load_space("pocketnet")
    torch.manual_seed(0)
    a = Supernet(space, 10, channels=4, layers=4, input_size=32, skip_none=True)
    b = Supernet(space, 10, channels=4, layers=4, input_size=32, skip_none=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


def test_supernet_runs_at_56_and_partial_channels():
    space = load_space("pocketnet")
    net = Supernet(space, 10, channels=8, layers=5, input_size=56, partial_k=4)
    assert net.final_size == 4 and len(net.alphas()) == 4  # alphas + PC-DARTS edge betas
    assert net(torch.randn(2, 3, 56, 56)).shape == (2, 128)
    assert {id(p) for p in net.weights()}.isdisjoint({id(a) for a in net.alphas()})



@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_keeps_channels_last(groups):
    x = torch.randn(2, 16, 5, 7)
    expected = torch.stack([x[:, g * (16 // groups) + i] for i in range(16 // groups) for g in range(groups)], 1)
    assert torch.equal(channel_shuffle(x, groups), expected)
    y = channel_shuffle(x.contiguous(memory_format=torch.channels_last), groups)
    assert torch.equal(y, expected) and y.is_contiguous(memory_format=torch.channels_last)
    # a partial-channel supernet stays channels-last all the way (the shuffle used to turn it NCHW)
    net = Supernet(load_space("pocketnet"), 10, channels=8, layers=3, input_size=32, partial_k=groups)
    net = net.to(memory_format=torch.channels_last)
    seen = []
    for cell in net.cells:
        cell.register_forward_hook(lambda m, i, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    net(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen == [True] * 3

def test_first_order_alphas_get_gradients_and_move(tmp_path):
    import logging

    class Console(logging.Handler):  # what a console handler on the root logger receives
        def __init__(self):
            super().__init__(logging.INFO)
            self.text = []

        def emit(self, record):
            self.text.append(record.getMessage())

    console = Console()
    logging.getLogger().addHandler(console)
    searcher = Searcher(tiny(), str(tmp_path))
    before = [a.detach().clone() for a in searcher.model.alphas()]
    history = searcher.run()
    searcher.close()
    after = searcher.model.alphas()
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    g = Genotype.from_json(str(tmp_path / "genotype.json"))
    record = json.loads((tmp_path / "genotype.json").read_text())["search"]  # how it was found travels with it
    assert record["method"] == "darts" and record["space"] == "pocketnet" and record["seed"] == 0
    net = pocketnas.create_model("pocketnet", genotype=g, channels=4, layers=3).eval()
    assert net(torch.randn(1, 3, 112, 112)).shape == (1, 128)
    assert (tmp_path / "cells" / "final_normal.png").exists() and (tmp_path / "cells" / "epoch_002_reduce.png").exists()
    assert any(f.startswith("events.out") for f in os.listdir(tmp_path / "tb"))
    log = (tmp_path / "log.txt").read_text()
    assert "alphas (normal), softmax per edge" in log and "genotype: Genotype(" in log
    # the console (what propagates to the root logger) has each epoch's summary, not every alpha of every edge
    logging.getLogger().removeHandler(console)
    shown = "\n".join(console.text)
    assert "genotype: Genotype(" in shown and "softmax per edge" not in shown
    assert history["alpha_entropy_start"] > history["alpha_entropy_end"]


def test_second_order_matches_exact_hypergradient(tmp_path):
    """The finite-difference Hessian-vector product of the unrolled step against autograd through the unrolled
    step, on a smooth supernet (average pooling, PReLUs at slope 1: no kinks, where a finite difference and
    autograd's almost-everywhere second derivative would legitimately differ)."""
    from torch.func import functional_call

    space = tmp_path / "smooth.yaml"
    space.write_text("name: smooth\noperations: [avg_pool_3x3, skip_connect, dw_conv_3x3, dw_conv_1x1, none]\n")
    cfg = search_config(str(space), None, TINY + ["order=second", "w_weight_decay=0.0", "channels_last=false"],
                        {"data": orl_root()})
    searcher = Searcher(cfg, str(tmp_path / "run"))
    model, arch = searcher.model, searcher.architect
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.fill_(1.0)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 40, (8,))
    vx, vy = torch.randn(8, 3, 32, 32), torch.randint(0, 40, (8,))
    xi = 0.05
    for a in model.alphas():
        a.grad = None
    arch._unrolled_backward(x, y, vx, vy, xi, searcher.w_optim)  # a fresh optimizer: no momentum yet
    approx = [a.grad.clone() for a in model.alphas()]
    weight_ids, alpha_ids = {id(q) for q in model.weights()}, {id(q) for q in model.alphas()}
    params = dict(model.named_parameters())
    names_w = [n for n, p in params.items() if id(p) in weight_ids]
    names_a = [n for n, p in params.items() if id(p) in alpha_ids]
    model.forward = model.logits  # what functional_call runs
    l_train = F.cross_entropy(functional_call(model, params, (x, y)), y)
    grads = torch.autograd.grad(l_train, [params[n] for n in names_w], create_graph=True)
    unrolled = dict(params)
    for n, g in zip(names_w, grads):
        unrolled[n] = params[n] - xi * g
    l_val = F.cross_entropy(functional_call(model, unrolled, (vx, vy)), vy)
    exact = torch.autograd.grad(l_val, [params[n] for n in names_a])
    searcher.close()
    for e, a in zip(exact, approx):
        assert F.cosine_similarity(e.flatten(), a.flatten(), dim=0) > 0.999
        assert (e - a).norm() / e.norm() < 0.03


def test_hessian_passes_with_frozen_weights_equal_the_plain_ones(tmp_path):
    """The finite-difference passes ask for the alphas' gradients only, so the default path freezes the weights
    while they run: the same alpha gradients as with the weights requiring gradients (the plain path), and the
    network's weights and their requires_grad are as they were afterwards."""
    searcher = Searcher(tiny("order=second"), str(tmp_path))
    model, arch = searcher.model, searcher.architect
    torch.manual_seed(3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 40, (8,))
    weights = [w.detach().clone() for w in model.weights()]
    dw = [torch.randn_like(w) * 1e-2 for w in weights]
    both = []
    for only_needed in (True, False):
        arch.only_needed_grads = only_needed
        both.append(arch._hessian_vector(dw, x, y))
        assert all(torch.allclose(w, w0, atol=1e-6) for w, w0 in zip(model.weights(), weights))
        assert all(w.requires_grad for w in model.weights())
    searcher.close()
    for frozen_w, plain in zip(*both):
        assert plain.abs().max() > 0
        assert torch.allclose(frozen_w, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


def test_virtual_step_is_the_unrolled_formula_bit_for_bit(tmp_path):
    """w' = w - xi * (m + g + wd * w) (pt.darts's virtual step, momentum and weight decay included) computed for all
    weights at once gives, bit for bit, the formula applied weight by weight; with momentum on some weights only
    (no buffer yet on the others) too. The virtual network's weight list is its own."""
    searcher = Searcher(tiny("order=second", "w_weight_decay=0.01"), str(tmp_path))
    model, arch, w_optim = searcher.model, searcher.architect, searcher.w_optim
    torch.manual_seed(5)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 40, (8,))
    weights = model.weights()
    for i, w in enumerate(weights):  # a momentum buffer on every other weight
        w.grad = torch.randn_like(w) if i % 2 == 0 else None
    w_optim.step()
    assert 0 < sum("momentum_buffer" in w_optim.state.get(w, {}) for w in weights) < len(weights)
    xi = 0.07
    arch._virtual_step(x, y, xi, w_optim)
    grads = torch.autograd.grad(F.cross_entropy(model.logits(x, y), y), weights)
    for w, vw, g in zip(weights, arch.v_net.weights(), grads):
        buf = w_optim.state.get(w, {}).get("momentum_buffer")
        m = buf * 0.9 if buf is not None else 0.0
        assert torch.equal(vw, w - xi * (m + g + 0.01 * w))
    assert {id(p) for p in arch.v_net.weights()}.isdisjoint({id(p) for p in model.weights()})
    assert [id(p) for p in arch.v_net.weights()] == [id(p) for p in arch._v_weights]
    searcher.close()


def test_weight_list_is_kept_and_dropped_on_conversion():
    net = Supernet(load_space("pocketnet"), 10, channels=4, layers=3, input_size=32)
    from pocketnas.engine.search import SearchModel

    model = SearchModel(net, torch.nn.Linear(128, 10))
    first = model.weights()
    assert [id(p) for p in first] == [id(p) for p in model.weights()] and first is not model.weights()
    assert len(first) == len(list(model.parameters())) - len(model.alphas())
    model.head = torch.nn.Linear(128, 7)  # replacing a submodule: forget_weights() makes it seen
    model.forget_weights()
    assert id(model.head.weight) in {id(p) for p in model.weights()}
    model.double()
    assert all(p.dtype == torch.float64 for p in model.weights())


def test_plain_formulation_is_the_original_one(tmp_path):
    searcher = Searcher(tiny("order=second", "plain=true"), str(tmp_path))
    from pocketnas.layers.kernels import BatchNorm2d, DepthwiseConv2d, PReLU

    prelus = [m for m in searcher.model.modules() if isinstance(m, PReLU)]
    assert prelus and not any(m.own_kernel for m in prelus)

    depthwise = [m for m in searcher.model.modules() if isinstance(m, DepthwiseConv2d)]
    norms = [m for m in searcher.model.modules() if isinstance(m, BatchNorm2d)]
    assert depthwise and not any(m.own_kernel for m in depthwise)
    assert norms and not any(m.own_kernel for m in norms)
    assert not searcher.architect.only_needed_grads
    searcher.close()


@pytest.mark.slow
def test_second_order_search_runs(tmp_path):
    history = search(tiny("order=second", "epochs=1"), str(tmp_path))
    assert history["epochs"][0]["val_loss"] > 0 and (tmp_path / "genotype.json").exists()


@pytest.mark.slow
def test_resume_reproduces_the_alphas(tmp_path):
    full, broken = str(tmp_path / "full"), str(tmp_path / "broken")
    search(tiny("epochs=3"), full)
    assert search(tiny("epochs=3", "stop_after_epochs=2"), broken).get("interrupted")
    search(tiny("epochs=3"), broken, resume=True)
    a = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(broken, "checkpoint.pt"), weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert open(os.path.join(full, "genotype.json")).read() == open(os.path.join(broken, "genotype.json")).read()


@pytest.mark.slow
def test_budget_moves_the_derived_cost_toward_the_target(tmp_path):
    common = ("epochs=3", "alpha_lr=0.05", "budget_weight=5.0", "max_batches_per_epoch=3")
    free = search(tiny(*common), str(tmp_path / "free"))
    small = search(tiny(*common, "budget_params=0.5M"), str(tmp_path / "small"))
    start, end = small["epochs"][0]["expected_cost"], small["epochs"][-1]["expected_cost"]
    assert end < start  # the expected cost of the derived 16x18 PocketNet falls toward 0.5 M
    from pocketnas.nas.budget import build_cost_model

    cm = build_cost_model(load_space("pocketnet"), "params", 16, 18)
    free_cost = cm.of_genotype(Genotype.from_dict(free["final_genotype"]))
    small_cost = cm.of_genotype(Genotype.from_dict(small["final_genotype"]))
    assert small_cost < free_cost


def test_beta_decay_loss_pulls_each_edge_toward_uniform():
    from pocketnas.nas.beta_decay import beta_decay_loss, beta_decay_weight

    a = torch.randn(14, 8, requires_grad=True)
    b = torch.randn(14, 8, requires_grad=True)
    loss = beta_decay_loss([a, b])
    assert torch.allclose(loss, torch.cat([torch.logsumexp(a, -1), torch.logsumexp(b, -1)]).mean())
    loss.backward()
    # its gradient is each edge's softmax over the 28 edges: the strongest operation is pulled down the most
    assert torch.allclose(a.grad, F.softmax(a.detach(), -1) / 28, atol=1e-7)
    assert beta_decay_weight(50.0, 0, 10) == 0.0 and beta_decay_weight(50.0, 5, 10) == 25.0
    with pytest.raises(ConfigError, match="beta_decay must not be negative"):
        tiny("beta_decay=-1")


@pytest.mark.slow
def test_beta_decay_keeps_the_alphas_spread_in_check(tmp_path):
    common = ("epochs=3", "alpha_lr=0.05", "max_batches_per_epoch=3")
    plain = search(tiny(*common), str(tmp_path / "plain"))
    beta = search(tiny(*common, "beta_decay=200"), str(tmp_path / "beta"))
    # the first epoch has weight 0: the same alphas; after it the regularised search stays nearer uniform
    assert beta["epochs"][0]["alpha_entropy"] == pytest.approx(plain["epochs"][0]["alpha_entropy"], abs=1e-6)
    assert beta["epochs"][-1]["alpha_entropy"] > plain["epochs"][-1]["alpha_entropy"]
    assert "beta-decay regularisation" in open(tmp_path / "beta" / "log.txt").read()


@pytest.mark.slow
def test_skip_cap_and_early_stop(tmp_path):
    space = load_space("pocketnet")
    skip = space.operations.index("skip_connect")
    alpha = torch.zeros(14, 8)
    alpha[:, skip] = 5.0
    assert count_skips(derive_genotype(space, alpha, torch.zeros(14, 8))) == 8
    capped = derive_genotype(space, alpha, torch.zeros(14, 8), max_skips=2)
    assert count_skips(capped) == 2 and all(len(node) == 2 for node in capped.normal)
    # a search whose derived normal cell suddenly fills with skips stops and keeps the previous genotype
    run = str(tmp_path)
    search(tiny("epochs=4", "stop_after_epochs=1"), run)
    state = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)
    state["model"]["supernet.alpha_normal"][:, skip] = 50.0
    torch.save(state, os.path.join(run, "checkpoint.pt"))
    history = search(tiny("epochs=4"), run, resume=True)
    assert "rose from" in history["stopped_early"] and len(history["epochs"]) == 2
    assert history["final_genotype"] == history["epochs"][0]["genotype"]
    assert "stopping early" in open(os.path.join(run, "log.txt")).read()


@pytest.mark.slow
def test_darts_space_search(tmp_path):
    history = search(tiny("epochs=1", space="darts"), str(tmp_path))
    ops = {op for node in history["final_genotype"]["normal"] for op, _ in node}
    assert ops <= set(load_space("darts").operations)


def test_config_file_beats_space_defaults_and_set_beats_both(tmp_path):
    (tmp_path / "s.yaml").write_text("channels: 8\ninput_size: 56\nepochs: 6\n")
    cfg = search_config("pocketnet", str(tmp_path / "s.yaml"), ["epochs=3"], {"data": "x", "budget_params": None})
    assert (cfg.channels, cfg.input_size, cfg.epochs, cfg.layers, cfg.alpha_lr) == (8, 56, 3, 8, 0.0012)


def test_search_config_errors():
    with pytest.raises(ConfigError, match="order must be first or second"):
        tiny("order=third")
    with pytest.raises(ConfigError, match="partial_k must divide channels"):
        tiny("partial_k=3")
    with pytest.raises(ConfigError, match="budget_params: cannot read 'lots'"):
        tiny("budget_params=lots")


@pytest.mark.slow
def test_search_command(tmp_path, capsys):
    from pocketnas.cli import main

    args = ["search", "--space", os.path.join(REPO, "search_spaces", "pocketnet.yaml"), "--data", orl_root(),
            "--out", str(tmp_path)] + [a for s in TINY for a in ("--set", s)]
    assert main(args + ["--set", "epochs=1"]) == 0
    assert "alpha entropy" in capsys.readouterr().out
    g = pocketnas.get_genotype(str(tmp_path / "genotype.json"))
    assert pocketnas.create_model("pocketnet_s_128", genotype=str(tmp_path / "genotype.json")).genotype == g


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_search(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "pocketnas.cli", "search", "--data", orl_root(), "--out", str(tmp_path)]
    for s in TINY + ["epochs=1", "batch_size=8"]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and (tmp_path / "genotype.json").exists()


@pytest.mark.parametrize("space_name", ["pocketnet", "darts"])
def test_mixed_op_folds_its_weights_into_batchnorm_exactly(space_name):
    """An edge's weighted sum with each BatchNorm-ending operation's softmax weight passed to its BatchNorm (folded
    into the normalisation on narrow channels-last maps) against the sum written out, sum_o w_o * o(x): the same
    output and the same gradients for the input, the weights and every parameter, on narrow and wide maps,
    channels-last and NCHW, stride 1 and 2."""
    import torch.nn.functional as F

    from pocketnas.nas.supernet import MixedOp

    torch.manual_seed(0)
    space = load_space(space_name)
    for channels, stride, channels_last in [(8, 1, True), (8, 2, True), (16, 1, True), (16, 2, False)]:
        op = MixedOp(channels, stride, space.operations, space.activation).train()
        x = torch.randn(4, channels, 10, 10)
        if channels_last:
            op = op.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        w = F.softmax(torch.randn(len(space.operations)), 0)
        results = []
        for written_out in (False, True):
            xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
            op.zero_grad()
            y = sum(ww[i] * op.ops[i](xx) for i in op.compute) if written_out else op(xx, ww)
            torch.manual_seed(1)
            y.backward(torch.randn_like(y))  # in y's memory layout, as in a real backward pass
            results.append([y.detach(), xx.grad, ww.grad] + [p.grad.clone() for p in op.parameters()
                                                             if p.grad is not None])
        assert len(results[0]) == len(results[1]) > 3
        for a, b in zip(*results):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), (channels, stride)


def test_a_space_does_not_choose_the_frame(tmp_path):
    # issue 40: keys that were validated and then ignored are refused, saying what the frame is
    from pocketnas.nas.space import SearchSpaceError

    path = tmp_path / "s.yaml"
    path.write_text("name: s\noperations: [dw_conv_3x3, skip_connect]\nreductions: pocketnet\n")
    with pytest.raises(SearchSpaceError, match="'reductions' is not a space's choice"):
        load_space(str(path))


def test_the_search_loss_names_say_what_they_are():
    # "linear" is the search's plain classifier; "softmax" is the registered normalised softmax, as in training
    assert tiny().loss == "linear"
    assert tiny("loss=softmax").loss == "softmax"
    with pytest.raises(ConfigError, match="loss must be linear .* or a margin"):
        tiny("loss=bogus")
