"""Sharing a finished run: its model card, its upload to the Hugging Face Hub, and its Gradio demo.

- `model_card`: `README.md` of the output directory, rendered from the run's records through the packaged
  `templates/model_card.md.jinja`.
- `hub`: one upload of the output directory to a model repository, and optionally a Space running the demo.
- `demo`: loads the packaged Space app (`space/app.py`) for `python -m hf_finetune demo`, and picks its example images.

The template and the Space folder are package data, so a wheel install has them; the repository's
`model_card_templates/` and `spaces_demo/` are identical copies (a test keeps them so).
"""
