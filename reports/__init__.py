"""Templates (Jinja2) and the style sheet of the PDF feedback; ``grader.render`` fills them.

A package only so that a wheel install carries them.
"""
