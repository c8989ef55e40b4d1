"""Size of the EWC penalty at the task-1 node: diagonal Fisher (library code) and (λ/2)·ΣF·Δw² for the
fine-tuning step from task1 to finetune2 (what EWC would have paid to go where fine-tuning went)."""
import sys, torch
torch.set_num_threads(1)
from fipgraph import open_store
from fipgraph.models import build_model
from fipgraph.data.tasks import make_tasks
from fipgraph.path.ops.ewc import diagonal_fisher
store_dir, head = sys.argv[1], sys.argv[2]
st = open_store(store_dir, mode="r")
tasks = make_tasks("mnist", [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], head=head)
m = build_model({"name": "cnn5", "kwargs": {"in_channels": 1, "n_classes": 10}})
st.load_into(m, 1)  # task1 node (step 190)
F = diagonal_fisher(m, tasks[0], head, 500, seed=1)
tot = sum(float(f.sum()) for f in F)
w1 = [p.detach().clone() for p in m.parameters()]
ft = st.load_into(build_model({"name": "cnn5", "kwargs": {"in_channels": 1, "n_classes": 10}}), 6)  # finetune2 last node
pen = sum(float((f * (p.detach() - w).pow(2)).sum()) for f, p, w in zip(F, ft.parameters(), w1))
print(f"{head}: sum F = {tot:.3e}, max F = {max(float(f.max()) for f in F):.3e}, "
      f"(5000/2)*sum F dw^2 (task1 -> finetune2) = {2500 * pen:.3e}")
