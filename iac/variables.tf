# Inputs of the Health Predict AWS stack. Only `allowed_cidr` and `repo_url` have no default:
# everything else is a reasoned default. Conditions are wrapped in can()/try() because
# Terraform before 1.12 evaluates both sides of `&&`, and a malformed value must produce the
# error_message below rather than a function error.

# --- where and what ---------------------------------------------------------------------

variable "aws_region" {
  description = "AWS region for every resource, e.g. us-east-1 or eu-west-1."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region must look like us-east-1, eu-west-1 or us-gov-west-1."
  }
}

variable "project_name" {
  description = "Prefix of every resource name (lower case, digits and dashes, 3-24 characters)."
  type        = string
  default     = "healthpredict"

  validation {
    # Bucket names are derived from it and must stay DNS-compatible and under 63 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{2,23}$", var.project_name))
    error_message = "project_name must be 3-24 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags added to every resource (for example Owner or CostCenter)."
  type        = map(string)
  default     = {}
}

# --- who may reach the host -------------------------------------------------------------

variable "allowed_cidr" {
  description = "The only IPv4 range allowed to reach SSH and the UIs, e.g. your public IP as 203.0.113.7/32 (`curl -s https://checkip.amazonaws.com`)."
  type        = string

  validation {
    # A valid IPv4 CIDR, written as its network address (AWS would otherwise silently
    # widen 203.0.113.7/24 to 203.0.113.0/24), and no wider than a /8: 0.0.0.0/0 would put
    # JupyterLab, which runs code, and the Airflow UI on the whole internet.
    condition = (
      can(cidrnetmask(var.allowed_cidr)) &&
      try(cidrsubnet(var.allowed_cidr, 0, 0) == var.allowed_cidr, false) &&
      try(tonumber(split("/", var.allowed_cidr)[1]) >= 8, false)
    )
    error_message = "allowed_cidr must be an IPv4 CIDR such as 203.0.113.7/32, written as its network address, with a prefix of /8 or longer; 0.0.0.0/0 is refused."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key (the contents of ~/.ssh/id_ed25519.pub) installed for the ubuntu user; empty for no key pair (then use SSM, see enable_ssm)."
  type        = string
  default     = ""

  validation {
    condition     = var.ssh_public_key == "" || can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$", trimspace(var.ssh_public_key)))
    error_message = "ssh_public_key must be an OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...), not a private key or a file path."
  }
}

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore to the host role so `aws ssm start-session` works without SSH. Off by default: the role stays limited to this project's bucket and repository."
  type        = bool
  default     = false
}

# --- the host ---------------------------------------------------------------------------

variable "instance_type" {
  description = "EC2 instance type of the service host. Airflow, MLflow, JupyterLab, PostgreSQL and Minikube together need about 12 GiB of memory: t3.xlarge (4 vCPU, 16 GiB) or larger; Graviton types (t4g, m7g) work too, the AMI follows the architecture."
  type        = string
  default     = "t3.xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*[0-9][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 type name such as t3.xlarge or m7g.xlarge."
  }
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume in GiB (images of Airflow, MLflow, JupyterLab and the Minikube node take about 25 GiB)."
  type        = number
  default     = 80

  validation {
    condition     = var.root_volume_size_gb >= 40 && var.root_volume_size_gb <= 1000 && floor(var.root_volume_size_gb) == var.root_volume_size_gb
    error_message = "root_volume_size_gb must be a whole number between 40 and 1000."
  }
}

variable "ubuntu_version" {
  description = "Ubuntu LTS release of the host AMI (published by Canonical)."
  type        = string
  default     = "24.04"

  validation {
    condition     = contains(["22.04", "24.04"], var.ubuntu_version)
    error_message = "ubuntu_version must be \"22.04\" or \"24.04\"."
  }
}

variable "repo_url" {
  description = "HTTPS URL of the Health Predict git repository cloned on the host, e.g. https://github.com/OWNER/healthpredict.git."
  type        = string

  validation {
    # No quotes or spaces: the value is placed in a shell script.
    condition     = can(regex("^https://[A-Za-z0-9._~:/@%+-]+$", var.repo_url))
    error_message = "repo_url must be an https:// git URL without spaces or quotes."
  }
}

variable "repo_ref" {
  description = "Branch, tag or commit of repo_url checked out on the host."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/-]{1,200}$", var.repo_ref)) && !startswith(var.repo_ref, "-")
    error_message = "repo_ref must be a branch, tag or commit name (letters, digits, . _ / -), not starting with '-'."
  }
}

variable "minikube_version" {
  description = "Minikube release installed on the host (checked against its published sha256)."
  type        = string
  default     = "v1.36.0"

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+$", var.minikube_version))
    error_message = "minikube_version must look like v1.36.0."
  }
}

variable "kubectl_minor_version" {
  description = "Kubernetes minor release whose kubectl is installed from pkgs.k8s.io, e.g. v1.33."
  type        = string
  default     = "v1.33"

  validation {
    condition     = can(regex("^v1\\.[0-9]+$", var.kubectl_minor_version))
    error_message = "kubectl_minor_version must look like v1.33."
  }
}

variable "api_node_port" {
  description = "NodePort of the serving API in Minikube, opened to allowed_cidr next to the UIs (see docs/terraform_guide.md for how it is forwarded)."
  type        = number
  default     = 30080

  validation {
    condition     = var.api_node_port >= 30000 && var.api_node_port <= 32767
    error_message = "api_node_port must be in the Kubernetes NodePort range 30000-32767."
  }
}

# --- network ----------------------------------------------------------------------------

variable "create_vpc" {
  description = "Create a dedicated VPC, public subnet, internet gateway and route table. Set to false and give existing_subnet_id to use a subnet you already have."
  type        = bool
  default     = true
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when create_vpc is true."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 28, false)
    error_message = "vpc_cidr must be an IPv4 CIDR between /16 and /28 (the limits AWS accepts for a VPC)."
  }
}

variable "public_subnet_cidr" {
  description = "CIDR of the public subnet created inside vpc_cidr when create_vpc is true."
  type        = string
  default     = "10.42.1.0/24"

  validation {
    condition     = can(cidrnetmask(var.public_subnet_cidr)) && try(tonumber(split("/", var.public_subnet_cidr)[1]) <= 28, false)
    error_message = "public_subnet_cidr must be an IPv4 CIDR of /28 or larger."
  }
}

variable "availability_zone" {
  description = "Availability zone of the created subnet, e.g. us-east-1a; empty picks the first zone (a-f) that offers instance_type."
  type        = string
  default     = ""

  validation {
    condition     = var.availability_zone == "" || can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", var.availability_zone))
    error_message = "availability_zone must be empty or a zone name such as us-east-1a."
  }
}

variable "existing_subnet_id" {
  description = "ID of an existing public subnet (with a route to an internet gateway) for the host; required when create_vpc is false, ignored otherwise."
  type        = string
  default     = ""

  validation {
    condition     = var.existing_subnet_id == "" || can(regex("^subnet-[0-9a-f]{8,17}$", var.existing_subnet_id))
    error_message = "existing_subnet_id must be empty or a subnet ID such as subnet-0123456789abcdef0."
  }
}

variable "enable_flow_logs" {
  description = "Record VPC flow logs of the created VPC in an encrypted CloudWatch log group (a few cents a month for one host)."
  type        = bool
  default     = true
}

variable "flow_log_retention_days" {
  description = "Days CloudWatch keeps the VPC flow logs (one of the values CloudWatch accepts)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be a CloudWatch retention value: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653."
  }
}

# --- storage ----------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the S3 bucket for data, MLflow artifacts and rendered reports; empty derives <project_name>-<account id>-<region>, which is globally unique."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_name == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be empty or a valid S3 bucket name (3-63 characters of a-z, 0-9, '.' and '-')."
  }
}

variable "rendered_retention_days" {
  description = "Days after which objects under rendered/ (executed notebooks, HTML and drift reports of past runs) expire."
  type        = number
  default     = 90

  validation {
    condition     = var.rendered_retention_days >= 1 && floor(var.rendered_retention_days) == var.rendered_retention_days
    error_message = "rendered_retention_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept before it expires (the undo window)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && floor(var.noncurrent_version_retention_days) == var.noncurrent_version_retention_days
    error_message = "noncurrent_version_retention_days must be a whole number of days, at least 1."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which the parts of an interrupted multipart upload (a large MLflow artifact) are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1 && floor(var.abort_incomplete_multipart_days) == var.abort_incomplete_multipart_days
    error_message = "abort_incomplete_multipart_days must be a whole number of days, at least 1."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a non-empty bucket (all object versions) and an ECR repository that still holds images. Keep false; set true only for the teardown."
  type        = bool
  default     = false
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the customer-managed KMS key is deleted after destroy (7-30 days; data encrypted with it is unreadable once it is gone)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

# --- container registry -----------------------------------------------------------------

variable "ecr_repository_name" {
  description = "Name of the ECR repository holding the serving image."
  type        = string
  default     = "healthpredict-api"

  validation {
    condition     = can(regex("^[a-z0-9]+([._/-][a-z0-9]+)*$", var.ecr_repository_name)) && length(var.ecr_repository_name) <= 256
    error_message = "ecr_repository_name must be lower case letters and digits separated by '.', '_', '-' or '/'."
  }
}

variable "ecr_keep_images" {
  description = "How many of the newest images the ECR lifecycle policy keeps (older ones are expired)."
  type        = number
  default     = 20

  validation {
    condition     = var.ecr_keep_images >= 1 && var.ecr_keep_images <= 1000 && floor(var.ecr_keep_images) == var.ecr_keep_images
    error_message = "ecr_keep_images must be a whole number between 1 and 1000."
  }
}

variable "ecr_untagged_retention_days" {
  description = "Days an untagged image (a layer set left behind by a failed or superseded push) is kept."
  type        = number
  default     = 7

  validation {
    condition     = var.ecr_untagged_retention_days >= 1 && floor(var.ecr_untagged_retention_days) == var.ecr_untagged_retention_days
    error_message = "ecr_untagged_retention_days must be a whole number of days, at least 1."
  }
}

# --- CI/CD (GitHub Actions OIDC) --------------------------------------------------------

variable "github_repository" {
  description = "GitHub repository (OWNER/NAME) whose Actions may push the serving image to ECR through OIDC; empty creates no GitHub role."
  type        = string
  default     = ""

  validation {
    condition     = var.github_repository == "" || can(regex("^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$", var.github_repository))
    error_message = "github_repository must be empty or OWNER/NAME, e.g. octo-org/healthpredict (no wildcards)."
  }
}

variable "github_deploy_branch" {
  description = "Only workflow runs on this branch of github_repository may assume the deploy role."
  type        = string
  default     = "main"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/-]+$", var.github_deploy_branch))
    error_message = "github_deploy_branch must be a branch name without wildcards."
  }
}

variable "create_github_oidc_provider" {
  description = "Create the account's IAM OIDC provider for token.actions.githubusercontent.com. An account holds at most one per URL: set false when it already exists, and the existing one is looked up."
  type        = bool
  default     = true
}
