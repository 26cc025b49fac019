"""The local control plane: moto for S3, IAM, STS and IoT, our own code for CodeDeploy's
on-premises fleet, its deployment orchestrator and the CodeDeployCommand endpoint agents poll.
"""
