"""Compress your own TorchRec training loop in place with UMEC.

The loop below is an ordinary TorchRec DLRM training loop; the lines marked ``# UMEC``
are all that compression adds: wrap the optimizer, pass batches through the feature mask,
and read the masks at the end. Run it with::

    .venv/bin/python examples/compress_in_place.py

It trains on the synthetic click log (where the truly informative features are known)
and prints which features and how many units survive a 30% FLOPs / 50% embedding budget.
"""

import torch
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from umec_torchrec.data import load_data
from umec_torchrec.umec import UMECOptimizer, resources_of_masks  # UMEC

data = load_data("synthetic:rows=20000,seed=0,min_count=3")
train, valid, test = data.train, data.valid, data.test

# --- the user's model and optimizer, nothing UMEC-specific ---------------------------------
torch.manual_seed(0)
tables = [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=16, num_embeddings=n, feature_names=[f])
          for f, n in zip(train.feature_names, train.table_sizes)]
model = DLRMTrain(DLRM(EmbeddingBagCollection(tables), dense_in_features=13,
                       dense_arch_layer_sizes=[64, 32, 16], over_arch_layer_sizes=[64, 32, 1]))
optimizer = torch.optim.Adagrad(model.parameters(), lr=0.05)


def run_epoch(opt, epoch, transform=lambda b: b):
    for batch in train.batches(256, shuffle=True, epoch=epoch):
        loss, _ = model(transform(batch))
        loss.backward()
        opt.step()
        opt.zero_grad()


run_epoch(optimizer, 0)  # ordinary (dense) training

# --- compression: three lines ------------------------------------------------------------
umec = UMECOptimizer(optimizer, model, ["flops=0.3", "embedding_bytes=0.5"])  # UMEC
for epoch in (1, 2):
    run_epoch(umec, epoch, transform=umec.feature_mask)  # UMEC: same loop, wrapped optimizer
masks = umec.finalize()  # UMEC: hard pruning; pruned weights stay exactly zero from now on

run_epoch(umec, 3, transform=umec.feature_mask)  # fine-tune the compressed architecture

# --- read the result ---------------------------------------------------------------------
with torch.no_grad():
    model.eval()
    _, (_, logits, labels) = model(umec.feature_mask(test.make_batch(torch.arange(len(test)))))
from umec_torchrec.train.metrics import binary_metrics  # noqa: E402

print("kept features:", masks.kept_features)
print("signal features (ground truth):", data.info["signal_features"])
print("kept units per layer:", masks.kept_units())
for name, r in resources_of_masks(umec.spec, masks).items():
    print(f"{name}: {100 * r['fraction']:.1f}% of dense ({r['value']:.4g} of {r['dense']:.4g})")
print("test:", {k: round(v, 4) for k, v in binary_metrics(logits, labels).items()})
