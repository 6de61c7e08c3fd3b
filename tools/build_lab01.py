"""Writes assignments/lab01/lab01.ipynb from the cells below (kept so the notebook's
history reads as code review; edit here, run it, commit both)."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []


def md(text, **grader):
    c = new_markdown_cell(text.strip("\n"))
    if grader:
        c.metadata["grader"] = grader
    cells.append(c)


def code(text, **grader):
    c = new_code_cell(text.strip("\n"))
    if grader:
        c.metadata["grader"] = grader
    cells.append(c)


md("""
# Lab 01 — Deep learning on biomedical time series

Two exercises on real PhysioNet data:

1. **Atrial fibrillation (AF) from interbeat (RR) intervals** — MIT-BIH Atrial Fibrillation Database.
2. **Gait classification from stride intervals** — Gait in Neurodegenerative Disease Database.

For each, you define, train and evaluate an MLP, a 1-D CNN and a recurrent network, then
interpret the results. The code is mostly given: the lab tests your understanding of what
you see. Replace every `None` placeholder and every `# YOUR CODE HERE` with your answer, and
write your interpretations in the cells marked *Your answer*.

Submit this notebook as `name1_name2_name3_lab_01.ipynb` (family names) on Moodle, one upload per
member. Before submitting, run `grader check` on it (last cell).
""")

md("## Group\nThe full names of the group's members (up to three), as on Moodle.")
code("""
GROUP = [
    ### BEGIN SOLUTION
    "Ada Lovelace",
    "Alan Turing",
    ### END SOLUTION
]
""", group=True)

md("## Set-up\nSeeds are set in one place. `LAB_SEED` in the environment changes them (the grader's calibration runs several).")
code("""
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from reference.data import AF_SPLIT, load_af, load_af_beats, load_gait
from reference.models import build_model, count_parameters
from reference.training import evaluate, fit, pick_device, set_seed

SEED = int(os.environ.get("LAB_SEED", "0"))
set_seed(SEED)
device = pick_device()
print("device:", device, "| seed:", SEED)
""", locked=True)

md("""
## Part 0 — Warm-up from the lecture

**Q perceptron_and.** Complete the perceptron of the lecture (step activation, weights
w1 = w2 = 0.5, bias b = -0.8) and give its outputs on the inputs (0,0), (0,1), (1,0), (1,1).
""")
code("""
def perceptron(x1, x2, w1=0.5, w2=0.5, b=-0.8):
    ### BEGIN SOLUTION
    return int(w1 * x1 + w2 * x2 + b > 0)
    ### END SOLUTION


perceptron_and = tuple(perceptron(a, b) for a, b in [(0, 0), (0, 1), (1, 0), (1, 1)])
perceptron_and
""")

md("""
**Q vanishing.** Which activations saturate, so that gradients vanish through many layers?
A set of names among `"sigmoid"`, `"tanh"`, `"relu"`, `"leaky_relu"`.

**Q classification_losses.** Which losses of the lecture suit a classification output?
A set among `"cross_entropy"`, `"bce"`, `"l1"`, `"mse"`, `"smooth_l1"`.
""")
code("""
### BEGIN SOLUTION
vanishing = {"sigmoid", "tanh"}
classification_losses = {"cross_entropy", "bce"}
### END SOLUTION
""")

md("""
**Q conv_len, conv_len_dilated.** Output length of `nn.Conv1d` on an input of length 30:
(a) kernel 5, padding 2, stride 2, dilation 1; (b) kernel 3, padding 0, stride 1, dilation 4.
Use the lecture's formula, then check with PyTorch.

**Q lstm_out_shape, lstm_hn_shape.** `nn.LSTM(input_size=1, hidden_size=32, batch_first=True,
bidirectional=True)` on a batch of shape (8, 30, 1): the shapes of `output` and of `h_n`.
""")
code("""
### BEGIN SOLUTION
conv_len = (30 + 2 * 2 - 1 * (5 - 1) - 1) // 2 + 1
conv_len_dilated = (30 + 2 * 0 - 4 * (3 - 1) - 1) // 1 + 1
lstm_out_shape = (8, 30, 64)
lstm_hn_shape = (2, 8, 32)
### END SOLUTION
""")
code("""
# Check your answers with PyTorch.
x = torch.zeros(8, 1, 30)
print(nn.Conv1d(1, 1, 5, stride=2, padding=2)(x).shape[-1], nn.Conv1d(1, 1, 3, dilation=4)(x).shape[-1])
out, (h_n, c_n) = nn.LSTM(1, 32, batch_first=True, bidirectional=True)(torch.zeros(8, 30, 1))
print(tuple(out.shape), tuple(h_n.shape))
""", locked=True)

md("""
## Part 1 — Atrial fibrillation from RR intervals

Windows of 30 consecutive RR intervals, labelled AF when most of their beats are in AF.
Records are split into train, validation and test sets: a record never appears in two sets.
""")
code("""
af = load_af(window=30)
print("classes:", af.classes)
for name in ("train", "val", "test"):
    split = getattr(af, name)
    print(f"{name:5s} {split.X.shape} AF fraction {split.y.mean():.3f} records {sorted(set(split.groups.tolist()))}")

rr, flag = load_af_beats()["04746"]
fig, ax = plt.subplots(figsize=(10, 3))
ax.plot(rr[20000:22000], lw=0.7)
ax.fill_between(np.arange(2000), 0, 2.5, where=flag[20000:22000] == 1, alpha=0.2, label="AF")
ax.set_xlabel("beat"); ax.set_ylabel("RR interval (s)"); ax.legend(); ax.set_title("record 04746")
plt.show()
""", locked=True)

md("""
**Q af_train_windows.** How many training windows are there?

**Q af_test_fraction.** Which fraction of the test windows is AF?

**Q split_reason.** Why are the sets split by record and not by window? One letter:
A) to balance the classes; B) windows of one patient in both train and test make the test
score optimistic; C) records do not fit in memory; D) PyTorch requires it.
""")
code("""
### BEGIN SOLUTION
af_train_windows = len(af.train)
af_test_fraction = float(af.test.y.mean())
split_reason = "B"
### END SOLUTION
""")

md("""
### MLP

Build an MLP with `build_model("mlp", ...)` for the AF windows, with two hidden layers of 64
and 32 units (`hidden=(64, 32)`), and name it `mlp_af`.

**Q mlp_params.** Its number of trainable parameters.

**Q output_loss.** Our models end with a linear layer that gives one raw score (logit) per
class. Which loss goes with that output? A) `nn.BCELoss`; B) `nn.CrossEntropyLoss`;
C) `nn.MSELoss`; D) `nn.L1Loss`.
""")
code("""
### BEGIN SOLUTION
mlp_af = build_model("mlp", af.window, af.channels, af.n_classes, hidden=(64, 32))
mlp_params = count_parameters(mlp_af)
output_loss = "B"
### END SOLUTION
""")
code("""
history_mlp = fit(mlp_af, af, epochs=8, batch_size=256, lr=2e-3, patience=3)
print(evaluate(mlp_af, af.test))
""", locked=True)

md("""
### Learning rate and optimizer

The cell below trains the same MLP three times for three epochs: with SGD and a far too
large learning rate (1.0), with SGD at 1e-3, and with Adam at 1e-3.

**Q lr_too_large.** What does the far too large learning rate do to the training loss?
A) it decreases smoothly, faster than with 1e-3; B) it stays exactly constant;
C) it jumps around or grows instead of settling (it may even become NaN);
D) it decreases, then the validation loss falls below the training loss.

**Q sgd_vs_adam.** On your run, which optimizer at 1e-3 reached the lower validation loss
after three epochs: `"sgd"` or `"adam"`?
""")
code("""
runs = {}
for label, opt, lr in [("SGD lr=1.0", "sgd", 1.0), ("SGD lr=1e-3", "sgd", 1e-3), ("Adam lr=1e-3", "adam", 1e-3)]:
    set_seed(SEED)
    m = build_model("mlp", af.window, af.channels, af.n_classes, hidden=(64, 32))
    runs[label] = fit(m, af, epochs=3, batch_size=256, lr=lr, optimizer=opt, momentum=0.0, restore_best=False)
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for label, h in runs.items():
    axes[0].plot(h.train_loss, marker="o", label=label)
    axes[1].plot(h.val_loss, marker="o", label=label)
axes[0].set_title("training loss"); axes[1].set_title("validation loss")
for ax in axes:
    ax.set_xlabel("epoch"); ax.legend()
plt.show()
{label: [round(v, 3) for v in h.val_loss] for label, h in runs.items()}
""", locked=True)
code("""
### BEGIN SOLUTION
lr_too_large = "C"
sgd_vs_adam = "adam" if runs["Adam lr=1e-3"].val_loss[-1] < runs["SGD lr=1e-3"].val_loss[-1] else "sgd"
### END SOLUTION
""")

md("""
### CNN

Build a 1-D CNN (`build_model("cnn", ...)`, `filters=(32, 64)`, `kernel_size=5`) named `cnn_af`.
The grader measures its accuracy on the test records itself, from the weights you trained.
""")
code("""
### BEGIN SOLUTION
cnn_af = build_model("cnn", af.window, af.channels, af.n_classes, filters=(32, 64), kernel_size=5)
### END SOLUTION
""")
code("""
history_cnn = fit(cnn_af, af, epochs=8, batch_size=256, lr=2e-3, patience=3)
cnn_metrics = evaluate(cnn_af, af.test)
cm = np.array(cnn_metrics["confusion_matrix"])
fig, ax = plt.subplots(figsize=(3.5, 3))
ax.imshow(cm, cmap="Greys")
for (i, j), v in np.ndenumerate(cm):
    ax.text(j, i, v, ha="center", va="center", color="tab:red")
ax.set_xticks([0, 1], af.classes); ax.set_yticks([0, 1], af.classes)
ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title("CNN, test records")
plt.show()
cm
""", locked=True)

md("""
**Q cnn_af_test_accuracy.** The test accuracy of your CNN.

**Q cnn_af_sensitivity, cnn_af_specificity.** From the confusion matrix `cm` above (rows: true
class, columns: predicted; AF is the positive class), compute the sensitivity and the specificity.
""")
code("""
### BEGIN SOLUTION
cnn_af_test_accuracy = float(np.trace(cm) / cm.sum())
cnn_af_sensitivity = float(cm[1, 1] / cm[1].sum())
cnn_af_specificity = float(cm[0, 0] / cm[0].sum())
### END SOLUTION
""")

md("""
### RNN

Build a bidirectional GRU (`build_model("bigru", ...)`, `hidden=32`) named `rnn_af`. The
grader measures its balanced accuracy on the test records.
""")
code("""
### BEGIN SOLUTION
rnn_af = build_model("bigru", af.window, af.channels, af.n_classes, hidden=32)
### END SOLUTION
""")
code("""
history_rnn = fit(rnn_af, af, epochs=6, batch_size=512, lr=3e-3, patience=3)
print(evaluate(rnn_af, af.test))
""", locked=True)

md("""
**Q best_model.** Which of your three AF models is best, and why? Compare their test
metrics, their number of parameters and their training time (a few sentences).
""")
md("""
*Your answer:*

### BEGIN SOLUTION
The CNN is best: highest test accuracy and balanced accuracy with the fewest parameters. Its
convolutions see local patterns of successive RR intervals (the irregularity that defines AF),
wherever they occur in the window; the MLP must learn each position separately, and the GRU
reaches similar figures at many times the training cost.
### END SOLUTION
""", answer="best_model")

md("""
## Part 2 — Gait classification from stride intervals

64 subjects (16 controls, 20 Huntington's, 15 Parkinson's, 13 ALS); windows of 20 strides
over 12 interval channels. The task here is binary (control vs disease). Subjects are split
into 5 folds; we use fold 0: its subjects are the test set.
""")
code("""
gait = load_gait("binary", fold=0)
for name in ("train", "val", "test"):
    split = getattr(gait, name)
    print(f"{name:5s} {split.X.shape} subjects {len(set(split.groups))} classes {np.bincount(split.y)}")
""", locked=True)

md("""
**Q gait_window_shape.** The shape of one window (a tuple).

**Q gait_test_subjects.** The number of subjects in the test set.
""")
code("""
### BEGIN SOLUTION
gait_window_shape = tuple(gait.train.X.shape[1:])
gait_test_subjects = len(set(gait.test.groups))
### END SOLUTION
""")

md("""
Build a CNN for gait (`build_model("cnn", ...)`, `filters=(16, 32)`, `kernel_size=3`,
`dropout=0.3`) named `gait_model`. The cell after trains it and draws its curves. The grader
measures its balanced accuracy by subject on the test subjects.
""")
code("""
### BEGIN SOLUTION
gait_model = build_model("cnn", gait.window, gait.channels, gait.n_classes, filters=(16, 32), kernel_size=3, dropout=0.3)
### END SOLUTION
""")
code("""
history_gait = fit(gait_model, gait, epochs=40, batch_size=64, lr=1e-3, weight_decay=1e-4, restore_best=False)
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].plot(history_gait.train_loss, label="train"); axes[0].plot(history_gait.val_loss, label="validation")
axes[1].plot(history_gait.train_metric, label="train"); axes[1].plot(history_gait.val_metric, label="validation")
axes[0].set_title("loss"); axes[1].set_title("balanced accuracy")
for ax in axes:
    ax.set_xlabel("epoch"); ax.legend()
plt.show()
gait_metrics = evaluate(gait_model, gait.test, by_subject=True)
gait_metrics
""", locked=True)

md("""
**Q gait_fit.** Read the curves: is the gait model `"underfitting"`, `"overfitting"` or a `"good fit"`?

**Q gait_subject_balanced_accuracy.** The balanced accuracy by subject of your gait model on the test subjects.
""")
code("""
### BEGIN SOLUTION
gait_fit = "overfitting"
gait_subject_balanced_accuracy = float(gait_metrics["subject_balanced_accuracy"])
### END SOLUTION
""")

md("""
**Q gait_interpretation.** Why is gait harder than AF here, and what would you change first?
""")
md("""
*Your answer:*

### BEGIN SOLUTION
Only 64 subjects: each fold trains on fewer than 40 people, so the model learns the subjects
rather than the diseases (training loss keeps falling while validation loss rises). Windows of
one subject are strongly correlated, so the thousand windows are far fewer independent
examples. First: more subjects, or fewer parameters with stronger regularization and features
such as stride-interval variability.
### END SOLUTION
""", answer="gait_interpretation")

md("""
## Before you submit

Run the self-check: it executes nothing of the grader's key, only checks the form of your
answers (`pip install` of the hand-out gives the `grader` command).
""")
code("""
# !grader check name1_name2_name3_lab_01.ipynb --no-run
""")

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
})
out = Path(__file__).resolve().parents[1] / "assignments" / "lab01" / "lab01.ipynb"
nbformat.write(nb, out)
print("wrote", out)
