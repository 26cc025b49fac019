"""The deployment engine: runs CodeDeploy host commands against a deployment-root.

``CommandExecutor`` executes one command (``DownloadBundle``, ``Install`` or a hook event) the
way the official agent does and returns ``Diagnostics``; ``deploy_local`` drives a whole
deployment from a local bundle.
"""
