"""The vocabulary a rating session and its vote store share (a leaf module: it imports nothing of the package)."""

VOTES_FILE = "votes.sqlite"

# The two questions of the paper's DrawBench study (Sec. 4.2), and the three answers to each.
QUESTIONS = (
    ("quality", "Which set of images is of higher quality?"),
    ("alignment", "Which set of images better represents the text caption?"),
)
LEFT, SAME, RIGHT = "left", "same", "right"
CHOICES = (LEFT, SAME, RIGHT)
