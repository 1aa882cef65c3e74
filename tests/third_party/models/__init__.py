"""LightningModules written the way their authors write them, for the third-party matrix (issue 14).

Nothing in this package knows about lightning_nas: no hooks, no adapters, no extra methods for it. The only
import of lightning_nas is ``space.LayerChoice``, in the searchable variants, where the author marks a choice
the way the README shows. Each file is one project.
"""
