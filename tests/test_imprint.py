"""Imprinted margin-head centres (Qi et al. 2018): the arithmetic on real faces, and what they are good for."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pocketnas
from pocketnas.data import orl_root
from pocketnas.engine.imprint import class_centres
from pocketnas.data.face_sets import open_face_dataset
from pocketnas.data.transforms import fit_size
from pocketnas.image_size import input_hw


@pytest.fixture(scope="module")
def orl():
    faces = open_face_dataset(orl_root(), 112)
    images, labels = zip(*(faces.sample_uint8(i) for i in range(len(faces))))
    return faces, np.stack(images), np.array(labels)


def _embed(model, images, flip):
    """Unit embeddings of uint8 faces, resized to the network's input as the imprinting resizes them."""
    model = model.eval()
    with torch.no_grad():
        x = pocketnas.data.normalize(fit_size(torch.from_numpy(images), input_hw(model)))
        emb = model(x) + (model(x.flip(-1)) if flip else 0)
    return F.normalize(emb, dim=1)


def _qi_centres(emb, labels, num_classes):
    """Eq. 2 of Qi et al. 2018 written out: each class's normalised sum of its unit embeddings."""
    return F.normalize(torch.stack([emb[torch.from_numpy(labels == c)].sum(0) for c in range(num_classes)]), dim=1)


@pytest.mark.parametrize("flip", [False, True])
def test_centres_are_the_normalised_mean_of_normalised_embeddings(orl, flip):
    faces, images, labels = orl
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet", channels=8, layers=3, embedding_size=64, input_size=56).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    centres = class_centres(model, faces, faces.num_classes, flip=flip, batch_size=48, progress=False)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    emb = _embed(model, images, flip)
    expected = _qi_centres(emb, labels, faces.num_classes)
    assert centres.shape == (40, 64)
    assert torch.allclose(centres, expected, atol=1e-4)
    assert torch.allclose(centres.norm(dim=1), torch.ones(40), atol=1e-5)


def test_a_class_without_images_keeps_a_zero_centre(orl):
    faces, _, _ = orl
    model = pocketnas.create_model("pocketnet", channels=8, layers=3, embedding_size=64)
    centres = class_centres(model, faces, faces.num_classes + 2, progress=False)
    assert torch.count_nonzero(centres[40:]) == 0 and torch.count_nonzero(centres[:40].norm(dim=1) > 0.99) == 40


@pytest.mark.slow
def test_imprinted_head_of_the_shipped_network_classifies_its_faces(tmp_path):
    """The shipped PocketNetS-128 never saw ORL: centres imprinted from its embeddings classify ORL's faces
    nearly perfectly, and the training run built with init_head=imprint starts from exactly those centres, with a
    far lower margin loss than the N(0, 0.01) head."""
    from pocketnas.config import config_from_dict
    from pocketnas.engine.train_config import TrainConfig
    from pocketnas.engine.trainer import Trainer
    from pocketnas.losses.heads import MarginHead
    from pocketnas.losses.margins import build_margin

    import shutil

    people = sorted(d for d in os.listdir(orl_root()) if os.path.isdir(os.path.join(orl_root(), d)))[:12]
    for person in people:  # 12 of the 40 people (120 faces): the same question at a third of the cost
        shutil.copytree(os.path.join(orl_root(), person), tmp_path / "faces" / person)
    faces = open_face_dataset(str(tmp_path / "faces"), 112)
    images, labels = (np.stack(x) for x in zip(*(faces.sample_uint8(i) for i in range(len(faces)))))
    model = pocketnas.create_model("pocketnet_s_128", pretrained=True)
    pocketnas.save(model, str(tmp_path / "s128.pt"))
    cfg = {"arch": "pocketnet_s_128", "data": str(tmp_path / "faces"), "batch_size": 40, "workers": 0, "epochs": 1,
           "threads": 2, "init_head": "imprint", "init_backbone": str(tmp_path / "s128.pt"), "compile": "false"}
    trainer = Trainer(config_from_dict(TrainConfig, cfg), str(tmp_path / "run"))
    try:
        head = trainer.head
        emb = _embed(model, images, flip=True)
        assert torch.allclose(head.fc.weight.detach(), _qi_centres(emb, labels, 12), atol=1e-4)
        accuracy = float(((emb @ head.fc.weight.detach().T).argmax(1).numpy() == labels).mean())
        assert accuracy >= 0.95
        y = torch.from_numpy(labels)
        with torch.no_grad():
            imprinted = F.cross_entropy(head(emb, y), y)
            torch.manual_seed(0)
            random = F.cross_entropy(MarginHead(128, 12, build_margin("arcface"))(emb, y), y)
        assert imprinted < 0.5 * random, (float(imprinted), float(random))
    finally:
        trainer.close()


def test_an_imprinted_run_resumes_exactly_without_imprinting_again(tmp_path):
    """Stopped after 4 steps and resumed, a run that began from imprinted centres ends with the uninterrupted
    run's weights; the resumed process restores the head from the checkpoint instead of imprinting it again."""
    from pocketnas.config import config_from_dict
    from pocketnas.engine.train_config import TrainConfig
    from pocketnas.engine.trainer import train

    torch.manual_seed(0)
    start = str(tmp_path / "start.pt")
    pocketnas.save(pocketnas.create_model("pocketnet", channels=4, layers=3, embedding_size=32), start)
    cfg = dict(arch="pocketnet", model_kwargs={"channels": 4, "layers": 3, "embedding_size": 32}, data=orl_root(),
               batch_size=16, workers=0, epochs=2, max_batches_per_epoch=3, lr=0.1, lr_reference_batch=16,
               milestones=[2], threads=2, init_backbone=start, init_head="imprint")
    full, broken = str(tmp_path / "full"), str(tmp_path / "broken")
    train(config_from_dict(TrainConfig, cfg), full)
    assert train(config_from_dict(TrainConfig, {**cfg, "stop_after_steps": 4}), broken)["stopped_at_step"] == 4
    log = tmp_path / "broken" / "log.txt"
    assert log.read_text().count("class centres imprinted from 400 images") == 1
    train(config_from_dict(TrainConfig, cfg), broken, resume=True)
    assert log.read_text().count("class centres imprinted") == 1 and "resumed at epoch 2" in log.read_text()
    a = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(broken, "checkpoint.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
