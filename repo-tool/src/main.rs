//! `petrel-repo`: the command line over the repository editor (thin; logic lives in the library).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::{
    Key, KeyId, Metadata, Root, Signature, Signed, Targets, Unrecognized,
};
use petrel_repo::editor::{
    self, BinsSpec, DelegationSpec, Editor, InitOptions, KeyType, RoleSpec, RotateSpec,
};
use petrel_repo::keyfile::KeyRef;
use petrel_repo::manifests::{self, AssignOptions, StateChange};
use petrel_repo::pkcs11::{self, Pkcs11Key};
use petrel_repo::publish::{self, Refresh};
use petrel_repo::workspace::{Settings, Workspace};
use petrel_repo::{audit, duration, fixtures, fsutil, signing, Error, Result};

/// Sign and publish Petrel repositories: keys, roles, delegations, targets, and the static tree.
#[derive(Parser, Debug)]
#[command(name = "petrel-repo", version, about, long_about = None, after_help = "\
Example (a new repository with one file, published to ./demo/tree):
  petrel-repo --repo demo init
  petrel-repo --repo demo add ./firmware.bin --prefix apps/acme/fw/1.0
  petrel-repo --repo demo publish")]
struct Cli {
    /// The repository workspace directory.
    #[arg(
        long,
        short = 'r',
        global = true,
        env = "PETREL_REPO",
        default_value = "."
    )]
    repo: PathBuf,
    /// Directory of private keys (default: <repo>/keys).
    #[arg(long, global = true, env = "PETREL_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// An extra private key to sign with (repeatable): a PKCS#8 PEM file, e.g. an offline
    /// root key, or a pkcs11: URI of a key in an HSM or token (docs/keys.md).
    #[arg(long = "key", global = true, value_name = "FILE_OR_URI")]
    key: Vec<KeyRef>,
    /// More logging (-v, -vv).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository workspace with fresh keys for root, targets, snapshot and timestamp.
    #[command(
        after_help = "Example:\n  petrel-repo --repo fleet init --threshold root=2 --keys root=3 --expiry timestamp=6h"
    )]
    Init(InitArgs),
    /// Add files or whole directory trees as targets (copied into the content store and hashed).
    #[command(
        after_help = "Examples:\n  petrel-repo add ./build/app.bin --prefix apps/acme/app/2.1\n  petrel-repo add ./release-tree --prefix apps/acme/suite/5.0 --role acme\n  petrel-repo add ./notes.txt --name docs/notes.txt --custom '{\"channel\":\"beta\"}'"
    )]
    Add(AddArgs),
    /// Remove targets from a role.
    #[command(after_help = "Example:\n  petrel-repo remove apps/acme/app/2.0/app.bin --role acme")]
    Remove {
        /// Role listing the targets (or delegating them to hashed bins).
        #[arg(long, default_value = "targets")]
        role: String,
        /// Target paths.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Add whole-file binary deltas from earlier versions of an artifact to a new one.
    #[command(after_help = "\
Every format that fits the pair is built and checked to rebuild the new bytes, and the
smallest is kept (its format is recorded in the target's custom metadata): zstd-patch (a
zstd frame with the old bytes as reference prefix), bsdiff-zstd and, for two ELF files of
one architecture, exec-bsdiff (bsdiff with the diff taken against the old code's
references moved to where the new version's layout puts them) up to 256 MiB, and
zstd-chunked (4 MiB chunks, for system images) from 16 MiB. Added as the target
deltas/<new sha256>/<old sha256>.zst with custom metadata naming both hashes and lengths
(docs/formats.md, Deltas). Devices that have exactly the old bytes installed download the
delta instead of the artifact and check the result against the artifact's signed hash.
A delta that is not smaller than the new artifact is skipped. Default role: `deltas` if
the repository has it, else `targets`.

Example:
  petrel-repo delta --from apps/acme/app/2.0/app.bin --from apps/acme/app/2.1/app.bin \\
      --to apps/acme/app/2.2/app.bin --role deltas")]
    Delta {
        /// An earlier version's target path (repeatable): the bytes devices have installed.
        #[arg(long = "from", required = true, value_name = "OLD_TARGET")]
        from: Vec<String>,
        /// The new version's target path.
        #[arg(long, value_name = "NEW_TARGET")]
        to: String,
        /// The role to list the deltas in (a role delegating to hashed bins places each).
        #[arg(long)]
        role: Option<String>,
        /// auto (every format that fits, the smallest kept), or only one of zstd-patch,
        /// zstd-chunked, bsdiff-zstd, exec-bsdiff.
        #[arg(long, default_value = "auto")]
        format: petrel_repo::delta::DeltaFormat,
    },
    /// Build the best delta between two files, outside any workspace (for trying formats
    /// on real pairs; `petrel-repo delta` is what publishes them).
    #[command(after_help = "\
Examples:
  petrel-repo delta-file libfoo.so.1.2 libfoo.so.1.3 -o libfoo.delta
  petrel-repo delta-file --format zstd-patch old.img new.img -o img.delta
  petrel-repo delta-file suite-5.0/ suite-5.1/ -o suite.delta

Two directories are packed as tree artifacts and get a tree delta (petrel-tree: unchanged
files by hash, changed and renamed files as file deltas, added files compressed); the
JSON line then counts each kind of file. Two tree containers (`petrel-repo pack-tree`, or
the .ptree targets `add` makes) get the same tree delta without packing them again.

Builds every format that fits (zstd-patch always; bsdiff-zstd and, for two ELF files of
one architecture, exec-bsdiff up to 256 MiB; zstd-chunked from 16 MiB), checks that each
rebuilds NEW exactly, keeps the smallest and prints one JSON line: the chosen format, its
length and every candidate's length. `petrel delta-apply` applies it.")]
    DeltaFile {
        /// The old version (a file, or a directory for a tree delta).
        old: PathBuf,
        /// The new version (a file, or a directory).
        new: PathBuf,
        /// Where to write the delta.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// Only these formats (repeatable): zstd-patch, zstd-chunked, bsdiff-zstd, exec-bsdiff.
        #[arg(long = "format", value_name = "FORMAT")]
        formats: Vec<String>,
    },
    /// Pack a directory into a tree container (what `add` stores for a directory), outside
    /// any workspace; prints its metadata as one JSON line.
    #[command(after_help = "\
Example:
  petrel-repo pack-tree suite-5.1/ -o suite-5.1.ptree
  petrel-repo delta-file suite-5.0.ptree suite-5.1.ptree -o suite.delta")]
    PackTree {
        /// The directory.
        dir: PathBuf,
        /// Where to write the container.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Delegate target paths (or hashed bins) to a new role with its own keys.
    #[command(
        after_help = "Examples:\n  petrel-repo delegate --to acme --paths 'apps/acme/*' 'apps/acme/*/*/*' --terminating\n  petrel-repo delegate --to partner --paths 'apps/partner/*' --public-key partner.pub.pem\n  petrel-repo delegate --from acme --to acme-bin --bins 64\n  petrel-repo delegate --from campaigns --to partner-acme --paths 'campaigns/acme-*' --public-key acme.pub.json --capabilities acme.toml"
    )]
    Delegate(DelegateArgs),
    /// Sign staged changes and write the static tree (snapshot and timestamp included);
    /// with --to (or `[publish] to`), upload the tree to an S3-compatible object store.
    #[command(after_help = "\
The upload puts targets first, then versioned metadata, then root, and timestamp.json
last, so devices polling the bucket see the previous repository until it ends; objects
already there are skipped, and running it again (even with nothing staged) finishes an
interrupted upload. Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
(and AWS_SESSION_TOKEN); docs/server.md, Publishing to object storage.

Examples:
  petrel-repo publish --key /media/offline/root.pem
  petrel-repo publish --to s3://updates/fleet
  petrel-repo publish --to s3://updates/fleet --endpoint http://127.0.0.1:9000")]
    Publish {
        #[command(flatten)]
        upload: UploadArgs,
    },
    /// Re-sign the timestamp (and with --snapshot the snapshot) with a new expiry, and publish.
    #[command(
        after_help = "Examples (cron, hourly):\n  petrel-repo --repo /srv/fleet refresh\n  petrel-repo --repo /srv/fleet refresh --to s3://fleet-bucket/repo"
    )]
    Refresh {
        /// Re-sign the snapshot too.
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        upload: UploadArgs,
    },
    /// Add, remove or replace keys of any role, root included.
    #[command(
        after_help = "Examples:\n  petrel-repo rotate timestamp --generate 1 --remove-key 1a2b...\n  petrel-repo rotate root --add-key new-root.pub.pem --threshold 2 --key old-root.pem\n  petrel-repo rotate timestamp --remove-key 1a2b... \\\n      --add-key 'pkcs11:token=online;object=timestamp?pin-source=file:/etc/petrel/hsm.pin'"
    )]
    Rotate(RotateArgs),
    /// Write a staged role for signing elsewhere (threshold signing with keys kept apart).
    #[command(after_help = "Example:\n  petrel-repo export root -o root-v2.json")]
    Export {
        /// The role.
        role: String,
        /// Output file (default: <role>.unsigned.json).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Sign a metadata file with one private key; writes a signature file. Needs no workspace.
    #[command(
        after_help = "Examples:\n  petrel-repo sign --signing-key root-2.pem root-v2.json -o root-v2.sig.json\n  petrel-repo sign --signing-key 'pkcs11:token=root-2;object=root' root-v2.json"
    )]
    Sign {
        /// The private key: a PKCS#8 PEM file or a pkcs11: URI.
        #[arg(long, value_name = "FILE_OR_URI")]
        signing_key: KeyRef,
        /// The metadata file.
        file: PathBuf,
        /// Output signature file (default: <file>.sig.json).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Add signatures made elsewhere to a staged role.
    #[command(after_help = "Example:\n  petrel-repo import-signature root root-v2.sig.json")]
    ImportSignature {
        /// The role.
        role: String,
        /// Signature files (from `sign`), or metadata files carrying signatures.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show staged roles and their signatures against thresholds.
    #[command(
        after_help = "Examples:\n  petrel-repo --repo fleet status\n  petrel-repo --repo fleet status --json | jq '.staged[].role'"
    )]
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a published tree the way a client would and explain every problem found.
    #[command(
        after_help = "Examples:\n  petrel-repo verify --tree ./demo/tree --root trusted-root.json\n  petrel-repo --repo demo verify"
    )]
    Verify {
        /// The tree (default: the workspace's tree).
        #[arg(long)]
        tree: Option<PathBuf>,
        /// The trusted root to start from (default: the tree's 1.root.json, trusted on first use).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Print the report as JSON (problems included; the exit code is the same).
        #[arg(long)]
        json: bool,
    },
    /// List targets: every target path with its length, sha256 and the role that signs it.
    #[command(subcommand)]
    Targets(TargetsCommand),
    /// Group manifests: the tested combinations of applications devices converge to.
    #[command(after_help = "\
Examples (kiosk-eu.toml holds kind = \"group\", id, revision and [apps.\"<app>\"] tables):
  petrel-repo group set kiosk-eu.toml && petrel-repo publish
  petrel-repo group set groups/ && petrel-repo publish
  petrel-repo group list")]
    Group(GroupArgs),
    /// Assign devices to a group, or remove them, through the hashed assignment bins (ids are
    /// never published); `assign show` says where one device is assigned.
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        after_help = "\
FILE holds one device id per line (blank lines and # comments are skipped); a --csv file
holds device_id,group[,canary] lines. Only salted hashes of the ids are written; the ids
themselves appear nowhere in the workspace or tree.

Examples:
  petrel-repo assign --group kiosk-eu --devices kiosks-eu.txt
  petrel-repo assign --csv fleet.csv
  petrel-repo assign --group kiosk-eu --devices lab.txt --canary --campaign fleet-owner-upgrade
  petrel-repo assign --remove --devices retired.txt
  petrel-repo assign show --device kiosk-0042"
    )]
    Assign(AssignArgs),
    /// Campaigns: create, update, halt, resume, cancel, list and show campaign manifests.
    #[command(after_help = "\
Examples:
  petrel-repo campaign create player-2.1.toml && petrel-repo publish
  petrel-repo campaign create campaigns/ && petrel-repo publish
  petrel-repo campaign halt player-2.1 && petrel-repo publish
  petrel-repo campaign list")]
    Campaign(CampaignArgs),
    /// Rollouts: status from device reports, the gates that act on it, and forecasts of
    /// each device's wave.
    #[command(subcommand)]
    Rollout(petrel_repo::rollout::RolloutCommand),
    /// The fleet: per device its group, last contact, installed versions and state in each
    /// campaign; per campaign its stages and what the next `rollout advance` does.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Generate a key or show a key's public part.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Write deterministic fixture repositories: a good one and, with --attacks, one per attack.
    #[command(after_help = "\
Writes DIR/good/ (repo/: the static tree to serve or read from file://; trusted/root.json:
the root to provision a test device with; fixture.json: what to download and expect) and,
with --attacks, DIR/attacks/<name>/ for each attack in the TUF threat list (rollback,
freeze, endless data, mix-and-match, fast-forward, bad signatures, path traversal, ...),
plus DIR/README.md describing every fixture and its expected outcome. Fixed keys and a
fixed clock make the output byte-identical on every run, so device makers can commit it
and test their update client in offline CI. The keys are public: test use only.

Examples:
  petrel-repo fixture --out fixtures --attacks
  petrel-repo fixture --out ci/tuf-fixtures --content ./firmware-drop")]
    Fixture {
        /// Output directory (its good/, attacks/ and README.md are replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Use these files as the good repository's targets (routed by path: apps/acme/*/*/*
        /// to role acme, apps/globex/*/*/* to globex, assign/* to hashed bins, the rest to
        /// targets). Attack fixtures always use the built-in content.
        #[arg(long, value_name = "DIR")]
        content: Option<PathBuf>,
        /// Also write one fixture per attack.
        #[arg(long)]
        attacks: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Generate a private key: a file (PKCS#8 PEM, mode 0600) or, for a pkcs11: URI, in the token.
    #[command(after_help = "\
In a token, the key pair is labelled with the URI's object= (and id=, else a random id);
the private key is sensitive and not extractable. ed25519 needs CKM_EDDSA; where the
token lacks it, use --type ecdsa (P-256).

Examples:
  petrel-repo key generate -o partner.pem && petrel-repo key public partner.pem > partner.pub.json
  petrel-repo key generate --type ecdsa \\
      -o 'pkcs11:token=online;object=timestamp-2?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/petrel/hsm.pin'")]
    Generate {
        /// Key type.
        #[arg(long = "type", value_enum, default_value = "ed25519")]
        key_type: KeyTypeArg,
        /// Output file, or a pkcs11: URI to generate the key in a token.
        #[arg(long, short, value_name = "FILE_OR_URI")]
        output: KeyRef,
    },
    /// Print the TUF public key object (JSON) and key id of a key file or token key.
    #[command(
        after_help = "Examples:\n  petrel-repo key public partner.pem\n  petrel-repo key public 'pkcs11:token=online;object=timestamp-2'"
    )]
    Public {
        /// A private key, PEM public key, TUF key JSON, or a pkcs11: URI.
        #[arg(value_name = "FILE_OR_URI")]
        file: KeyRef,
    },
}

#[derive(Subcommand, Debug)]
enum TargetsCommand {
    /// Every target of the workspace (staged changes included): path, length, sha256, role.
    #[command(after_help = "\
Roles are listed in the order devices search them; each role's targets by path. TREE says
whether the published role already lists the target with the same length and hashes.

Examples:
  petrel-repo targets list
  petrel-repo targets list --role acme --json | jq -r '.targets[].path'")]
    List {
        /// Only the targets this role signs (for a role delegating to hashed bins: its bins).
        #[arg(long)]
        role: Option<String>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Validate group manifests (TOML) and stage each as groups/<group>.json.
    #[command(after_help = "\
The revision must be greater than the current one, and every artifact (apps.<app>.target)
must already be a target of the repository. The manifest is signed by the role that
lists groups/<group>.json, else --role, else the role `groups` (created on first use,
paths groups/*, with a new key), within that role's capabilities.

PATH may be a directory: every *.toml file directly in it is a group manifest. All are
checked first (nothing is staged if one fails), then staged in one change; a manifest
identical to the current one is left alone.

Examples:
  petrel-repo group set kiosk-eu.toml && petrel-repo publish
  petrel-repo group set groups/ && petrel-repo publish")]
    Set {
        /// The group manifest (TOML; see docs/formats.md), or a directory of them.
        #[arg(value_name = "PATH")]
        file: PathBuf,
        /// The role to list a new group in (default `groups`).
        #[arg(long)]
        role: Option<String>,
    },
    /// List groups: id, revision, applications, role, and whether the tree has them.
    #[command(after_help = "Examples:\n  petrel-repo group list\n  petrel-repo group list --json")]
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where `publish` and `refresh` upload the tree (else `[publish]` in petrel-repo.toml).
#[derive(Args, Debug)]
struct UploadArgs {
    /// Upload the tree to this bucket and key prefix (overrides `[publish] to`).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    to: Option<String>,
    /// The endpoint of an S3-compatible store other than AWS (overrides `[publish]
    /// endpoint` and AWS_ENDPOINT).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The bucket's region (overrides `[publish] region` and AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Allow a plain-HTTP endpoint that is not a loopback address.
    #[arg(long)]
    allow_http: bool,
}

impl UploadArgs {
    /// The upload to make after signing, if any; checked before anything is signed.
    fn resolve(
        &self,
        ws: &Workspace,
    ) -> petrel_repo::Result<Option<petrel_repo::upload::UploadOptions>> {
        petrel_repo::upload::UploadOptions::resolve(
            &ws.settings.publish,
            self.to.as_deref(),
            self.endpoint.as_deref(),
            self.region.as_deref(),
            self.allow_http,
        )
    }
}

#[derive(Args, Debug)]
struct AssignArgs {
    #[command(subcommand)]
    command: Option<AssignCommand>,
    /// The group (it must exist: `petrel-repo group set`).
    #[arg(
        long,
        required_unless_present_any = ["remove", "csv"],
        conflicts_with = "remove"
    )]
    group: Option<String>,
    /// A file with one device id per line.
    #[arg(long, value_name = "FILE", required_unless_present = "csv")]
    devices: Option<PathBuf>,
    /// A file of device_id,group[,canary] lines: each device into its group, in one change.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["group", "devices", "remove", "canary"]
    )]
    csv: Option<PathBuf>,
    /// Remove the listed devices' entries from their bins instead (every id must be assigned).
    #[arg(long, conflicts_with_all = ["canary", "campaigns", "role"])]
    remove: bool,
    /// Mark the devices as canaries (they get campaigns with a canary stage first).
    #[arg(long)]
    canary: bool,
    /// Enrol the devices explicitly in this campaign (for applies_to.assigned_only); repeatable.
    #[arg(long = "campaign", value_name = "ID")]
    campaigns: Vec<String>,
    /// The role to list new bins in (default `assign`; a role with hashed bins places each bin).
    #[arg(long)]
    role: Option<String>,
}

#[derive(Subcommand, Debug)]
enum AssignCommand {
    /// Where one device is assigned: its bin, group, canary flag and explicit campaigns.
    #[command(after_help = "\
The bin and the entry key are computed here from the id, as the device computes them; the
id is not written anywhere. Staged changes are included.

Examples:
  petrel-repo assign show --device kiosk-0042
  petrel-repo assign show --device kiosk-0042 --json")]
    Show {
        /// The device id.
        #[arg(long, value_name = "ID")]
        device: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct CampaignArgs {
    #[command(subcommand)]
    command: CampaignCommand,
}

#[derive(Subcommand, Debug)]
enum CampaignCommand {
    /// Validate new campaigns (TOML) and stage each as campaigns/<id>.json.
    #[command(after_help = "\
The campaign is checked against the capabilities of the role that will sign it (every
delegation from targets to it) before anything is staged. Default role: `campaigns`
(created on first use, paths campaigns/*, with a new key). A group payload must name
the group's current revision.

PATH may be a directory: every *.toml file directly in it is a new campaign. All are
checked first (nothing is staged if one fails), then staged in one change.

Examples:
  petrel-repo campaign create player-2.1.toml
  petrel-repo campaign create campaigns/
  petrel-repo campaign create acme-kiosk.toml --role partner-acme --key acme.pem")]
    Create {
        /// The campaign manifest (TOML; see docs/formats.md), or a directory of them.
        #[arg(value_name = "PATH")]
        file: PathBuf,
        /// The role to list and sign it (default `campaigns`).
        #[arg(long)]
        role: Option<String>,
    },
    /// Stage a new revision of a campaign from its TOML (the revision must grow).
    #[command(after_help = "\
Consent is bound to the campaign's offer (notice, payload, consent policy and stage,
method, forced set): a revision that changes it makes devices ask again; one that changes
only the state, schedule, waves or applicability keeps the consent given. The command says
which. A cancelled campaign stays cancelled.

Example:
  petrel-repo campaign update player-2.1.toml && petrel-repo publish")]
    Update {
        /// The campaign manifest (TOML).
        file: PathBuf,
        /// The role that lists it (default: the role that lists it now).
        #[arg(long)]
        role: Option<String>,
    },
    /// Halt a campaign: a new revision with state = "halted" (devices re-check before installing).
    #[command(
        after_help = "Example:\n  petrel-repo campaign halt player-2.1 && petrel-repo publish"
    )]
    Halt {
        /// The campaign id.
        id: String,
    },
    /// Resume a halted campaign: a new revision with state = "active".
    #[command(
        after_help = "Example:\n  petrel-repo campaign resume player-2.1 && petrel-repo publish"
    )]
    Resume {
        /// The campaign id.
        id: String,
    },
    /// Cancel a campaign for good: a new revision with state = "cancelled".
    #[command(
        after_help = "Example:\n  petrel-repo campaign cancel player-2.1 && petrel-repo publish"
    )]
    Cancel {
        /// The campaign id.
        id: String,
    },
    /// List campaigns: id, revision, state, consent policy, method, waves, role.
    #[command(
        after_help = "Examples:\n  petrel-repo --repo fleet campaign list\n  petrel-repo --repo fleet campaign list --json | jq -r '.campaigns[].id'"
    )]
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one campaign: a summary and its manifest as indented JSON.
    #[command(
        after_help = "Examples:\n  petrel-repo campaign show player-2.1\n  petrel-repo campaign show player-2.1 --json | jq .rollout"
    )]
    Show {
        /// The campaign id.
        id: String,
        /// Print only the manifest JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum KeyTypeArg {
    Ed25519,
    Ecdsa,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> Self {
        match k {
            KeyTypeArg::Ed25519 => KeyType::Ed25519,
            KeyTypeArg::Ecdsa => KeyType::EcdsaP256,
        }
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Key type for generated keys.
    #[arg(long = "key-type", value_enum, default_value = "ed25519")]
    key_type: KeyTypeArg,
    /// Number of keys for a role, as ROLE=N (repeatable; default 1 each).
    #[arg(long = "keys", value_parser = parse_role_number)]
    keys: Vec<(String, u32)>,
    /// Signature threshold for a role, as ROLE=N (repeatable; default 1 each).
    #[arg(long = "threshold", value_parser = parse_role_number)]
    threshold: Vec<(String, u32)>,
    /// Expiry for a role, as ROLE=DURATION (root, targets, snapshot, timestamp, delegated).
    #[arg(long = "expiry", value_parser = parse_role_duration)]
    expiry: Vec<(String, String)>,
    /// Publish without consistent snapshots (not recommended: clients may see mixed versions).
    #[arg(long)]
    no_consistent_snapshot: bool,
    /// Where to write the static tree, relative to the workspace.
    #[arg(long, default_value = "tree")]
    tree: PathBuf,
    /// Use this key for a top-level role instead of generating one, as ROLE=KEY (repeatable;
    /// KEY: a pkcs11: URI, or a public or private key file), e.g. timestamp and snapshot
    /// keys kept in an HSM.
    #[arg(long = "role-key", value_parser = parse_role_key, value_name = "ROLE=KEY")]
    role_keys: Vec<(String, KeyRef)>,
}

#[derive(Args, Debug)]
struct AddArgs {
    /// Files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Role to add to; a role that delegates to hashed bins places each target in its bin.
    #[arg(long, default_value = "targets")]
    role: String,
    /// Path prefix for the target names (e.g. apps/acme/app/1.0).
    #[arg(long)]
    prefix: Option<String>,
    /// Target name for a single file (instead of its file name).
    #[arg(long)]
    name: Option<String>,
    /// Custom metadata, a JSON object recorded with every added target.
    #[arg(long)]
    custom: Option<String>,
    /// Add each directory as one tree artifact (`<name>.ptree`: its files, modes and
    /// symbolic links with a signed file manifest), for install type "tree".
    #[arg(long)]
    tree: bool,
}

#[derive(Args, Debug)]
struct DelegateArgs {
    /// The delegating role.
    #[arg(long, default_value = "targets")]
    from: String,
    /// The delegated role's name (with --bins: the bins' name prefix).
    #[arg(long)]
    to: String,
    /// Path patterns the role is trusted for (`*` and `?` never match `/`).
    #[arg(long, num_args = 1.., conflicts_with_all = ["hash_prefixes", "bins"])]
    paths: Vec<String>,
    /// Hex prefixes of SHA-256(target path) the role is trusted for.
    #[arg(long, num_args = 1.., conflicts_with = "bins")]
    hash_prefixes: Vec<String>,
    /// Delegate to N hashed bins (a power of two) instead of one role.
    #[arg(long)]
    bins: Option<u64>,
    /// Use these public keys (TUF JSON, PEM public or private key files, pkcs11: URIs).
    #[arg(long = "public-key", value_name = "FILE_OR_URI")]
    public_keys: Vec<KeyRef>,
    /// Generate this many new keys (default 1 when no --public-key is given).
    #[arg(long)]
    generate: Option<usize>,
    /// Signatures required.
    #[arg(long, default_value_t = 1)]
    threshold: u32,
    /// Stop the search at this role for paths it matches.
    #[arg(long)]
    terminating: bool,
    /// Capabilities (TOML, docs/formats.md) restricting what the role may sign, stored as
    /// `petrel_capabilities` in the delegation. Without it, a re-delegation keeps them.
    #[arg(long, value_name = "FILE", conflicts_with = "clear_capabilities")]
    capabilities: Option<PathBuf>,
    /// Remove the delegation's capabilities.
    #[arg(long)]
    clear_capabilities: bool,
}

#[derive(Args, Debug)]
struct RotateArgs {
    /// The role: root, targets, snapshot, timestamp, a delegated role, or a bins prefix.
    role: String,
    /// Authorize these keys: TUF JSON, PEM public or private key files, or pkcs11: URIs of
    /// token keys (recorded as keys/<keyid>.pkcs11, so publish signs with the token).
    #[arg(long = "add-key", value_name = "FILE_OR_URI")]
    add_key: Vec<KeyRef>,
    /// Generate and authorize this many new keys.
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Revoke the key with this id (repeatable).
    #[arg(long = "remove-key")]
    remove_key: Vec<String>,
    /// New threshold.
    #[arg(long)]
    threshold: Option<u32>,
}

fn parse_role_number(s: &str) -> std::result::Result<(String, u32), String> {
    let (role, n) = s.split_once('=').ok_or("expected ROLE=N")?;
    let n = n.parse().map_err(|_| format!("{n:?} is not a number"))?;
    Ok((role.to_string(), n))
}

fn parse_role_key(s: &str) -> std::result::Result<(String, KeyRef), String> {
    let (role, key) = s
        .split_once('=')
        .ok_or("expected ROLE=KEY, e.g. timestamp=pkcs11:token=online;object=timestamp")?;
    Ok((role.to_string(), key.parse()?))
}

fn parse_role_duration(s: &str) -> std::result::Result<(String, String), String> {
    let (role, d) = s
        .split_once('=')
        .ok_or("expected ROLE=DURATION, e.g. timestamp=6h")?;
    duration::parse(d)?;
    Ok((role.to_string(), d.to_string()))
}

/// `petrel-repo fleet …` subcommands.
#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Per device: group, installed versions from its last report, last contact, state in
    /// each campaign (overdue or failed with the reason); per campaign: its stages and what
    /// the next `rollout advance` does.
    #[command(after_help = "\
The report database (or the report server's fleet endpoint) is joined with the published
tree: groups and canary flags come from the assignment bins, computed from each enrolled
device id locally.

States: succeeded, failed, staged, declined, installed_pending_reboot, not_reported,
overdue; --state pending matches every state but succeeded and failed.

Examples:
  petrel-repo fleet status --reports /var/lib/petrel/reports.db
  petrel-repo fleet status --reports https://reports.example.com --campaign player-2.1 --state failed --json")]
    Status {
        /// The report server's URL (http:// or https://) or its SQLite database file.
        #[arg(long, value_name = "URL_OR_DB")]
        reports: String,
        /// Only this campaign.
        #[arg(long, value_name = "ID")]
        campaign: Option<String>,
        /// Only devices in this wave (1-based).
        #[arg(long, value_name = "N")]
        wave: Option<u32>,
        /// Only devices in this state.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Print the view as JSON.
        #[arg(long)]
        json: bool,
        /// Bearer token for a report server started with --reports-read-token.
        #[arg(long, env = "PETREL_REPORTS_TOKEN", hide_env_values = true)]
        reports_token: Option<String>,
    },
}

/// The JSON line `delta-file` prints for a tree delta `d` to the container `n`.
fn tree_delta_line(
    d: &[u8],
    n: &[u8],
    meta: Option<&petrel_client::tree::TreeMeta>,
    made: &petrel_client::tree::delta::Made,
) -> serde_json::Value {
    let mut line = serde_json::json!({
        "engine": petrel_client::tree::delta::FORMAT,
        "length": d.len(),
        "new_length": n.len(),
        "copied": made.copied,
        "deltas": made.deltas,
        "renamed": made.renamed,
        "added": made.added,
        "removed": made.removed,
    });
    if let Some(m) = meta {
        line["new_tree_size"] = m.size.into();
        line["files"] = m.files.into();
    }
    line
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let json = cli.command.json_output();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            eprintln!("{}", serde_json::json!({ "error": e.to_string() }));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Whether the command was asked for JSON output (its errors are then JSON too).
    fn json_output(&self) -> bool {
        use petrel_repo::rollout::RolloutCommand;
        match self {
            Command::Status { json }
            | Command::Verify { json, .. }
            | Command::Targets(TargetsCommand::List { json, .. })
            | Command::Group(GroupArgs {
                command: GroupCommand::List { json },
            })
            | Command::Campaign(CampaignArgs {
                command: CampaignCommand::List { json } | CampaignCommand::Show { json, .. },
            })
            | Command::Rollout(
                RolloutCommand::Status { json, .. }
                | RolloutCommand::Forecast { json, .. }
                | RolloutCommand::Advance { json, .. },
            )
            | Command::Fleet(FleetCommand::Status { json, .. }) => *json,
            Command::Assign(AssignArgs {
                command: Some(AssignCommand::Show { json, .. }),
                ..
            }) => *json,
            _ => false,
        }
    }
}

fn open(cli: &Cli) -> Result<Workspace> {
    let mut ws = Workspace::open(&cli.repo)?;
    if let Some(k) = &cli.keys_dir {
        ws.set_keys_dir(k.clone());
    }
    ws.add_key_refs(cli.key.clone());
    Ok(ws)
}

fn open_for_edit(cli: &Cli) -> Result<Workspace> {
    let ws = open(cli)?;
    publish::ensure_not_interrupted(&ws)?;
    Ok(ws)
}

/// Generates `n` keys in memory; they are saved by [`save_keys`] only once the edit that
/// uses them has succeeded, so a refused edit leaves no stray key files.
fn generate_keys(n: usize, kt: KeyType) -> Result<Vec<(PrivateKey, String)>> {
    (0..n).map(|_| kt.generate()).collect()
}

/// Public keys from files or tokens; token keys are returned too, to be recorded by
/// [`save_token_keys`] once the edit that uses them has succeeded.
fn public_keys(refs: &[KeyRef]) -> Result<(Vec<Key>, Vec<Pkcs11Key>)> {
    let mut keys = Vec::new();
    let mut tokens = Vec::new();
    for r in refs {
        let p = r.public_key()?;
        keys.push(p.key);
        tokens.extend(p.token_key);
    }
    Ok((keys, tokens))
}

fn save_token_keys(ws: &Workspace, keys: &[Pkcs11Key]) -> Result<()> {
    for k in keys {
        let path = ws.save_key_reference(k)?;
        println!(
            "key {} is in PKCS#11 token {:?} ({})",
            k.key_id(),
            k.token_label(),
            path.display()
        );
    }
    Ok(())
}

fn save_keys(ws: &Workspace, keys: &[(PrivateKey, String)]) -> Result<()> {
    for (k, pem) in keys {
        let path = ws.save_private_key(k, pem)?;
        println!("generated key {} ({})", k.key_id(), path.display());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init(a) => {
            let mut settings = Settings {
                consistent_snapshot: !a.no_consistent_snapshot,
                tree: a.tree.clone(),
                ..Settings::default()
            };
            for (role, d) in &a.expiry {
                let e = &mut settings.expiry;
                let slot = match role.as_str() {
                    "root" => &mut e.root,
                    "targets" => &mut e.targets,
                    "snapshot" => &mut e.snapshot,
                    "timestamp" => &mut e.timestamp,
                    "delegated" => &mut e.delegated,
                    other => return Err(Error::Usage(format!("--expiry: unknown role {other:?}"))),
                };
                *slot = d.clone();
            }
            let mut roles: BTreeMap<String, RoleSpec> = BTreeMap::new();
            for (role, n) in &a.keys {
                check_top_level(role)?;
                if a.role_keys.iter().any(|(r, _)| r == role) {
                    return Err(Error::Usage(format!(
                        "--keys {role}=N and --role-key {role}=KEY: give one or the other"
                    )));
                }
                roles.entry(role.clone()).or_default().keys = *n as usize;
            }
            let mut given: BTreeMap<String, Vec<KeyRef>> = BTreeMap::new();
            for (role, key) in &a.role_keys {
                check_top_level(role)?;
                given.entry(role.clone()).or_default().push(key.clone());
            }
            // Read the given keys before anything is created: a token that cannot be used
            // leaves no half-made workspace behind.
            let mut given_keys: BTreeMap<String, Vec<Key>> = BTreeMap::new();
            let mut token_keys = Vec::new();
            for (role, refs) in &given {
                let (keys, tokens) = public_keys(refs)?;
                let ids: std::collections::BTreeSet<KeyId> = keys.iter().map(Key::key_id).collect();
                if ids.len() != keys.len() {
                    return Err(Error::Usage(format!(
                        "--role-key {role}=…: the same key is given twice"
                    )));
                }
                roles.entry(role.clone()).or_default().keys = keys.len();
                given_keys.insert(role.clone(), keys);
                token_keys.extend(tokens);
            }
            for (role, n) in &a.threshold {
                check_top_level(role)?;
                roles.entry(role.clone()).or_default().threshold = *n;
            }
            let opts = InitOptions {
                settings,
                key_type: a.key_type.into(),
                roles,
            };
            let ws = editor::init(&cli.repo, &opts)?;
            if !given_keys.is_empty() {
                use_given_keys(&ws, &given_keys)?;
                save_token_keys(&ws, &token_keys)?;
            }
            println!("created repository workspace {}", ws.dir().display());
            println!(
                "keys are in {} — move the root keys offline once published",
                ws.keys_dir().display()
            );
            println!("next: `petrel-repo add FILES` then `petrel-repo publish`");
            Ok(())
        }
        Command::Add(a) => {
            let ws = open_for_edit(&cli)?;
            let custom = match &a.custom {
                Some(c) => Some(
                    serde_json::from_str::<serde_json::Value>(c)
                        .map_err(|e| Error::Usage(format!("--custom is not JSON: {e}")))?,
                ),
                None => None,
            };
            let mut ed = Editor::new(&ws);
            let added = if a.tree {
                petrel_repo::trees::add_trees(
                    &mut ed,
                    &a.paths,
                    a.prefix.as_deref(),
                    a.name.as_deref(),
                    &a.role,
                    custom,
                )?
            } else {
                let sources =
                    editor::collect_sources(&a.paths, a.prefix.as_deref(), a.name.as_deref())?;
                if sources.is_empty() {
                    return Err(Error::Usage("no files found to add".into()));
                }
                ed.add_targets(
                    &sources,
                    &editor::AddOptions {
                        role: Some(a.role.clone()),
                        custom,
                    },
                )?
            };
            ed.save()?;
            let (new, replaced): (Vec<_>, Vec<_>) = added.iter().partition(|t| !t.replaced);
            if added.len() <= 20 {
                for t in &added {
                    println!(
                        "{} {} ({} bytes) in role {}",
                        if t.replaced { "updated" } else { "added" },
                        t.name,
                        t.file.length,
                        t.role
                    );
                }
            }
            println!(
                "{} target(s) added, {} updated; run `petrel-repo publish`",
                new.len(),
                replaced.len()
            );
            Ok(())
        }
        Command::Delta {
            from,
            to,
            role,
            format,
        } => {
            let ws = open_for_edit(&cli)?;
            let outcomes = petrel_repo::delta::make_deltas(
                &ws,
                &petrel_repo::delta::DeltaOptions {
                    from: from.clone(),
                    to: to.clone(),
                    role: role.clone(),
                    format: *format,
                },
            )?;
            let mut added = 0;
            for o in &outcomes {
                match o {
                    petrel_repo::delta::DeltaOutcome::Added {
                        from,
                        name,
                        role,
                        length,
                        result_length,
                    } => {
                        added += 1;
                        println!(
                            "added {name} in role {role}: {from} -> {to}, {length} bytes instead of {result_length}"
                        );
                    }
                    petrel_repo::delta::DeltaOutcome::Skipped {
                        from,
                        length,
                        result_length,
                    } => println!(
                        "skipped {from} -> {to}: the delta ({length} bytes) is not smaller than the artifact ({result_length} bytes)"
                    ),
                }
            }
            if added > 0 {
                println!("{added} delta(s) added; run `petrel-repo publish`");
            }
            Ok(())
        }
        Command::DeltaFile {
            old,
            new,
            out,
            formats,
        } => {
            use petrel_client::delta;
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| petrel_repo::error::Error::io(p, e));
            let mut opts = delta::BuildOptions::default();
            if !formats.is_empty() {
                opts.formats = Vec::new();
                for f in formats {
                    let known = delta::FORMATS
                        .iter()
                        .find(|k| **k == f.as_str())
                        .ok_or_else(|| {
                            petrel_repo::error::Error::Usage(format!(
                                "--format {f:?} is not a delta format ({})",
                                delta::FORMATS.join(", ")
                            ))
                        })?;
                    opts.formats.push(known);
                }
            }
            if old.is_dir() && new.is_dir() {
                // Two directories: packed as tree artifacts, and the tree delta between them.
                // Only the new container's layout is part of the delta (its frame
                // positions), so the base is packed stored, without compressing it.
                let pack = |d: &PathBuf,
                            level: Option<i32>|
                 -> petrel_repo::error::Result<(
                    Vec<u8>,
                    petrel_client::tree::TreeMeta,
                )> {
                    let mut f =
                        tempfile::tempfile().map_err(|e| petrel_repo::error::Error::io(d, e))?;
                    let meta = petrel_repo::trees::pack_dir_at(d, &mut f, level)?;
                    let mut b = Vec::new();
                    use std::io::{Read, Seek};
                    f.rewind()
                        .and_then(|()| f.read_to_end(&mut b))
                        .map_err(|e| petrel_repo::error::Error::io(d, e))?;
                    Ok((b, meta))
                };
                let ((o, _), (n, nmeta)) = (
                    pack(old, None)?,
                    pack(new, Some(petrel_repo::trees::LEVEL))?,
                );
                let (d, made) =
                    petrel_repo::trees::make_tree_delta(&o, &n, &opts).map_err(|e| {
                        petrel_repo::error::Error::Usage(format!(
                            "{} -> {}: {e}",
                            old.display(),
                            new.display()
                        ))
                    })?;
                std::fs::write(out, &d).map_err(|e| petrel_repo::error::Error::io(out, e))?;
                println!("{}", tree_delta_line(&d, &n, Some(&nmeta), &made));
                return Ok(());
            }
            let (o, n) = (read(old)?, read(new)?);
            if petrel_repo::trees::is_tree(&o) && petrel_repo::trees::is_tree(&n) {
                // Two tree containers (as `add` packs them): the tree delta between them,
                // as `publish` builds it.
                let (d, made) =
                    petrel_repo::trees::make_tree_delta(&o, &n, &opts).map_err(|e| {
                        petrel_repo::error::Error::Usage(format!(
                            "{} -> {}: {e}",
                            old.display(),
                            new.display()
                        ))
                    })?;
                std::fs::write(out, &d).map_err(|e| petrel_repo::error::Error::io(out, e))?;
                println!("{}", tree_delta_line(&d, &n, None, &made));
                return Ok(());
            }
            let best = delta::make_best(&o, &n, &opts).map_err(|e| {
                petrel_repo::error::Error::Usage(format!(
                    "{} -> {}: {e}",
                    old.display(),
                    new.display()
                ))
            })?;
            std::fs::write(out, &best.bytes).map_err(|e| petrel_repo::error::Error::io(out, e))?;
            let candidates: serde_json::Map<String, serde_json::Value> = best
                .candidates
                .iter()
                .map(|c| (c.format.to_string(), c.length.into()))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "engine": best.format,
                    "length": best.bytes.len(),
                    "new_length": n.len(),
                    "candidates": candidates,
                })
            );
            Ok(())
        }
        Command::PackTree { dir, out } => {
            let mut f =
                std::fs::File::create(out).map_err(|e| petrel_repo::error::Error::io(out, e))?;
            let meta = petrel_repo::trees::pack_dir(dir, &mut f)?;
            f.sync_all()
                .map_err(|e| petrel_repo::error::Error::io(out, e))?;
            println!(
                "{}",
                serde_json::json!({
                    "length": f.metadata().map_err(|e| petrel_repo::error::Error::io(out, e))?.len(),
                    "files": meta.files,
                    "tree_size": meta.size,
                    "manifest_sha256": meta.manifest_sha256,
                })
            );
            Ok(())
        }
        Command::Remove { role, names } => {
            let ws = open_for_edit(&cli)?;
            let mut ed = Editor::new(&ws);
            ed.remove_targets(role, names)?;
            ed.save()?;
            println!(
                "removed {} target(s); run `petrel-repo publish`",
                names.len()
            );
            Ok(())
        }
        Command::Delegate(a) => {
            let ws = open_for_edit(&cli)?;
            let caps = a
                .capabilities
                .as_deref()
                .map(manifests::read_capabilities)
                .transpose()?;
            let (mut keys, token_keys) = public_keys(&a.public_keys)?;
            let n = a.generate.unwrap_or(if keys.is_empty() { 1 } else { 0 });
            let generated = generate_keys(n, KeyType::Ed25519)?;
            keys.extend(generated.iter().map(|(k, _)| k.public_key().clone()));
            let mut ed = Editor::new(&ws);
            let mut lines = Vec::new();
            if let Some(bins) = a.bins {
                ed.delegate_bins(BinsSpec {
                    from: a.from.clone(),
                    bins,
                    name_prefix: a.to.clone(),
                    keys,
                    threshold: a.threshold,
                })?;
                lines.push(format!(
                    "delegated {} to {bins} hashed bins {}-*",
                    a.from, a.to
                ));
            } else {
                // A re-delegation (new keys, paths) keeps the fields the delegation carries,
                // capabilities included, unless told otherwise: dropping a restriction
                // silently would widen what the role may sign.
                let extra = manifests::existing_delegation(&mut ed, &a.from, &a.to)?
                    .map(|d| d.unrecognized)
                    .unwrap_or_else(Unrecognized::new);
                ed.delegate(DelegationSpec {
                    from: a.from.clone(),
                    name: a.to.clone(),
                    paths: (!a.paths.is_empty()).then(|| a.paths.clone()),
                    hash_prefixes: (!a.hash_prefixes.is_empty()).then(|| a.hash_prefixes.clone()),
                    keys,
                    threshold: a.threshold,
                    terminating: a.terminating,
                    extra,
                })?;
                lines.push(format!("delegated {} from {}", a.to, a.from));
            }
            if caps.is_some() || a.clear_capabilities {
                manifests::set_delegation_capabilities(
                    &mut ed,
                    &a.from,
                    &a.to,
                    a.bins.is_some(),
                    caps.as_ref(),
                )?;
            }
            let role = match a.bins {
                Some(_) => None,
                None => Some(a.to.as_str()),
            };
            if let Some(role) = role {
                let loc = ed.locate(role)?;
                let chain: Vec<String> = std::iter::once("targets".to_string())
                    .chain(loc.chain.iter().cloned())
                    .collect();
                let chain = manifests::lookup::capability_chain(&mut ed, &chain)?;
                lines.push(format!(
                    "capabilities along the chain: {}",
                    chain.describe()
                ));
                for w in manifests::check_role_manifests(&mut ed, role, ws.now())? {
                    lines.push(format!("warning: devices will reject {w}"));
                }
            } else if let Some(c) = &caps {
                lines.push(format!("capabilities of every bin: {}", c.summary()));
            }
            save_keys(&ws, &generated)?;
            save_token_keys(&ws, &token_keys)?;
            ed.save()?;
            for l in lines {
                println!("{l}");
            }
            println!("run `petrel-repo publish`");
            Ok(())
        }
        Command::Group(GroupArgs {
            command: GroupCommand::List { json },
        }) => {
            let ws = open(&cli)?;
            group_list(&ws, *json)
        }
        Command::Group(GroupArgs {
            command: GroupCommand::Set { file, role },
        }) => {
            let ws = open_for_edit(&cli)?;
            if file.is_dir() {
                return group_set_many(&ws, file, role.as_deref());
            }
            let r = manifests::set_group(&ws, file, role.as_deref())?;
            if r.unchanged {
                println!(
                    "{} is unchanged (revision {}); nothing staged",
                    r.target, r.revision
                );
                return Ok(());
            }
            for n in &r.notes {
                println!("{n}");
            }
            let was = r
                .previous
                .map(|p| format!(" (was {p})"))
                .unwrap_or_else(|| " (new group)".into());
            println!(
                "staged {} revision {}{was} in role {}; sha256 {}",
                r.target, r.revision, r.role, r.sha256
            );
            println!("run `petrel-repo publish`");
            Ok(())
        }
        Command::Assign(AssignArgs {
            command: Some(AssignCommand::Show { device, json }),
            ..
        }) => {
            let ws = open(&cli)?;
            assign_show(&ws, device, *json)
        }
        Command::Assign(a) if a.remove => {
            let ws = open_for_edit(&cli)?;
            let devices = a.devices.as_ref().expect("required by clap");
            let r = manifests::remove_devices(&ws, devices)?;
            println!("{} device(s) removed from their assignment bins", r.devices);
            if r.bins.len() <= 20 {
                for (name, role, revision) in &r.bins {
                    println!("staged {name} revision {revision} in role {role}");
                }
            }
            println!(
                "{} assignment bin(s) staged; run `petrel-repo publish`",
                r.bins.len()
            );
            Ok(())
        }
        Command::Assign(a) if a.csv.is_some() => {
            let ws = open_for_edit(&cli)?;
            let csv = a.csv.as_ref().expect("matched");
            let r = manifests::assign_csv(
                &ws,
                csv,
                &manifests::CsvAssignOptions {
                    role: a.role.clone(),
                    campaigns: a.campaigns.iter().cloned().collect(),
                },
            )?;
            for n in &r.notes {
                println!("{n}");
            }
            println!(
                "{} device(s) in {} group(s): {} new, {} moved from another group, {} updated, {} unchanged",
                r.devices, r.groups, r.added, r.moved, r.updated, r.unchanged
            );
            if r.bins.is_empty() {
                println!("no assignment bin changed; nothing staged");
                return Ok(());
            }
            println!(
                "{} assignment bin(s) staged; run `petrel-repo publish`",
                r.bins.len()
            );
            Ok(())
        }
        Command::Assign(a) => {
            let ws = open_for_edit(&cli)?;
            let group = a.group.clone().expect("required by clap without --remove");
            let devices = a.devices.as_ref().expect("required by clap");
            let r = manifests::assign_devices(
                &ws,
                devices,
                &AssignOptions {
                    group: group.clone(),
                    role: a.role.clone(),
                    canary: a.canary,
                    campaigns: a.campaigns.iter().cloned().collect(),
                },
            )?;
            for n in &r.notes {
                println!("{n}");
            }
            println!(
                "{} device(s) for group {}: {} new, {} moved from another group, {} updated, {} unchanged",
                r.devices, group, r.added, r.moved, r.updated, r.unchanged
            );
            if r.bins.is_empty() {
                println!("no assignment bin changed; nothing staged");
                return Ok(());
            }
            if r.bins.len() <= 20 {
                for (name, role, revision) in &r.bins {
                    println!("staged {name} revision {revision} in role {role}");
                }
            }
            println!(
                "{} assignment bin(s) staged; run `petrel-repo publish`",
                r.bins.len()
            );
            Ok(())
        }
        Command::Campaign(CampaignArgs { command }) => campaign(&cli, command),
        Command::Publish { upload } => {
            let ws = open(&cli)?;
            let upload = upload.resolve(&ws)?;
            report(publish::publish_with_deltas(&ws)?, ws.tree_dir());
            if let Some(u) = upload {
                println!("{}", petrel_repo::upload::upload_tree(&ws.tree_dir(), &u)?);
            }
            Ok(())
        }
        Command::Refresh { snapshot, upload } => {
            let ws = open(&cli)?;
            let upload = upload.resolve(&ws)?;
            let refresh = Refresh {
                timestamp: true,
                snapshot: *snapshot,
            };
            let r = publish::publish(&ws, refresh)?;
            let resumed = r.resumed;
            report(r, ws.tree_dir());
            if resumed {
                // The finished publish carries the timestamp signed when it began, which
                // may be old by now: refresh as asked.
                report(publish::publish(&ws, refresh)?, ws.tree_dir());
            }
            if let Some(u) = upload {
                println!("{}", petrel_repo::upload::upload_tree(&ws.tree_dir(), &u)?);
            }
            Ok(())
        }
        Command::Rotate(a) => {
            let ws = open_for_edit(&cli)?;
            let (mut add, token_keys) = public_keys(&a.add_key)?;
            let generated = generate_keys(a.generate, KeyType::Ed25519)?;
            add.extend(generated.iter().map(|(k, _)| k.public_key().clone()));
            let mut ed = Editor::new(&ws);
            ed.rotate(&RotateSpec {
                role: a.role.clone(),
                add,
                remove: a.remove_key.iter().map(|k| KeyId(k.clone())).collect(),
                threshold: a.threshold,
            })?;
            save_keys(&ws, &generated)?;
            save_token_keys(&ws, &token_keys)?;
            let staged = ed.save()?;
            println!("staged {}; run `petrel-repo publish`", staged.join(", "));
            Ok(())
        }
        Command::Export { role, output } => {
            let ws = open_for_edit(&cli)?;
            let out = output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{role}.unsigned.json")));
            let bytes = export(&ws, role)?;
            fsutil::write_atomic(&out, &bytes)?;
            println!(
                "wrote {}; sign it with `petrel-repo sign --signing-key KEY {}`",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Sign {
            signing_key,
            file,
            output,
        } => {
            let key = signing_key.signer()?;
            let bytes = fsutil::read(file)?;
            let sig = signing::sign_envelope_bytes(&bytes, key.as_ref())?;
            let out = output.clone().unwrap_or_else(|| {
                let mut p = file.clone().into_os_string();
                p.push(".sig.json");
                PathBuf::from(p)
            });
            fsutil::write_atomic(&out, &serde_json::to_vec_pretty(&sig).expect("serializes"))?;
            println!("signed with key {}; wrote {}", key.key_id(), out.display());
            Ok(())
        }
        Command::ImportSignature { role, files } => {
            let ws = open_for_edit(&cli)?;
            let mut sigs = Vec::new();
            for f in files {
                sigs.extend(read_signatures(f)?);
            }
            let n = if role == "root" {
                signing::import_signatures::<Root>(&ws, role, sigs)?
            } else if matches!(role.as_str(), "snapshot" | "timestamp") {
                return Err(Error::role(
                    role,
                    "is signed at publish time with online keys",
                ));
            } else {
                signing::import_signatures::<Targets>(&ws, role, sigs)?
            };
            println!("imported {n} signature(s) into staged {role}");
            Ok(())
        }
        Command::Status { json } => {
            let ws = open(&cli)?;
            status(&ws, *json)
        }
        Command::Targets(TargetsCommand::List { role, json }) => {
            let ws = open(&cli)?;
            targets_list(&ws, role.as_deref(), *json)
        }
        Command::Verify { tree, root, json } => {
            let tree = match tree {
                Some(t) => t.clone(),
                None => open(&cli)?.tree_dir(),
            };
            let report = audit::audit_tree(&tree, root.as_deref())?;
            if *json {
                let v = serde_json::json!({
                    "tree": tree.display().to_string(),
                    "ok": report.problems.is_empty(),
                    "root_version": report.root_version,
                    "roles_checked": report.roles_checked,
                    "targets_checked": report.targets_checked,
                    "problems": report.problems,
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
            } else {
                print!("{report}");
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(Error::State(format!(
                    "{} problem(s) found in {}",
                    report.problems.len(),
                    tree.display()
                )))
            }
        }
        Command::Key(KeyCommand::Generate {
            key_type,
            output: KeyRef::Pkcs11(uri),
        }) => {
            let kind = match key_type {
                KeyTypeArg::Ed25519 => pkcs11::GenerateType::Ed25519,
                KeyTypeArg::Ecdsa => pkcs11::GenerateType::EcdsaP256,
            };
            let k = pkcs11::generate(uri, kind)?;
            println!(
                "generated key {} in PKCS#11 token {:?}",
                k.key_id(),
                k.token_label()
            );
            Ok(())
        }
        Command::Key(KeyCommand::Generate {
            key_type,
            output: KeyRef::File(output),
        }) => {
            if output.exists() {
                return Err(Error::Usage(format!(
                    "{} exists; refusing to overwrite a key",
                    output.display()
                )));
            }
            let (k, pem) = KeyType::from(*key_type).generate()?;
            fsutil::write_atomic_mode(output, pem.as_bytes(), fsutil::PRIVATE_MODE)?;
            println!("generated key {} in {}", k.key_id(), output.display());
            Ok(())
        }
        Command::Rollout(command) => petrel_repo::rollout::run(command, || open(&cli)),
        Command::Fleet(FleetCommand::Status {
            reports,
            campaign,
            wave,
            state,
            json,
            reports_token,
        }) => {
            let ws = open(&cli)?;
            let view = petrel_repo::fleet::load_fleet(
                &petrel_repo::rollout::ReportsSource::parse(reports),
                &ws.tree_dir(),
                reports_token.as_deref(),
                ws.now(),
            )?;
            let view = petrel_repo::fleet::FleetFilter {
                campaign: campaign.clone(),
                wave: *wave,
                state: state.clone(),
            }
            .apply(view);
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).expect("fleet view serializes")
                );
            } else {
                print!("{}", petrel_repo::fleet::render_text(&view));
            }
            Ok(())
        }
        Command::Fixture {
            out,
            content,
            attacks,
        } => {
            let r = fixtures::generate(
                out,
                &fixtures::FixtureOptions {
                    content: content.clone(),
                    attacks: *attacks,
                },
            )?;
            println!(
                "wrote {} fixture(s), {} files ({} bytes) to {}; see {}",
                r.fixtures.len(),
                r.files,
                r.bytes,
                out.display(),
                out.join("README.md").display()
            );
            Ok(())
        }
        Command::Key(KeyCommand::Public { file }) => {
            let key = file.public_key()?.key;
            eprintln!("key id: {}", key.key_id());
            println!(
                "{}",
                serde_json::to_string_pretty(&key).expect("serializes")
            );
            Ok(())
        }
    }
}

fn campaign(cli: &Cli, command: &CampaignCommand) -> Result<()> {
    let staged = |r: &manifests::CampaignReport, verb: &str| {
        for n in &r.notes {
            println!("{n}");
        }
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        if r.unchanged {
            println!(
                "{} is unchanged (revision {}); nothing staged",
                r.target, r.revision
            );
            return;
        }
        let was = match r.previous {
            Some((rev, state)) => format!(" (was revision {rev}, {state})"),
            None => String::new(),
        };
        println!(
            "{verb} campaign {}: revision {}, {}{was}; staged {} in role {}",
            r.id, r.revision, r.state, r.target, r.role
        );
        match (&r.previous_sha256, &r.previous_offer_sha256) {
            (Some(old), Some(old_offer))
                if verb != "cancelled"
                    && r.policy != petrel_client::manifest::ConsentPolicy::None =>
            {
                println!("manifest sha256 {} (was {})", r.sha256, old.short());
                if *old_offer == r.offer_sha256 {
                    println!(
                        "offer sha256 {} (unchanged): consent already given still holds",
                        r.offer_sha256
                    )
                } else {
                    println!(
                        "offer sha256 {} (was {}): the offer changed, so devices ask for consent again",
                        r.offer_sha256,
                        old_offer.short()
                    )
                }
            }
            _ => println!(
                "manifest sha256 {}\noffer sha256 {}",
                r.sha256, r.offer_sha256
            ),
        }
    };
    match command {
        CampaignCommand::Create { file, role } if file.is_dir() => {
            let ws = open_for_edit(cli)?;
            let files = manifests::manifest_files(file)?;
            let b = manifests::create_campaigns(&ws, &files, role.as_deref())?;
            for n in &b.notes {
                println!("{n}");
            }
            let many = b.campaigns.len() > MANY;
            for r in &b.campaigns {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                if !many {
                    println!(
                        "created campaign {}: revision {}, {}; staged {} in role {}",
                        r.id, r.revision, r.state, r.target, r.role
                    );
                }
            }
            let mut roles: Vec<&str> = b.campaigns.iter().map(|r| r.role.as_str()).collect();
            roles.sort_unstable();
            roles.dedup();
            println!(
                "{} campaign(s) created, staged in role(s) {}",
                b.campaigns.len(),
                roles.join(", ")
            );
        }
        CampaignCommand::Create { file, role } => {
            let ws = open_for_edit(cli)?;
            let r = manifests::create_campaign(&ws, file, role.as_deref())?;
            staged(&r, "created");
        }
        CampaignCommand::Update { file, role } => {
            let ws = open_for_edit(cli)?;
            let r = manifests::update_campaign(&ws, file, role.as_deref())?;
            staged(&r, "updated");
            if r.unchanged {
                return Ok(());
            }
        }
        CampaignCommand::Halt { id }
        | CampaignCommand::Resume { id }
        | CampaignCommand::Cancel { id } => {
            let (change, verb) = match command {
                CampaignCommand::Halt { .. } => (StateChange::Halt, "halted"),
                CampaignCommand::Resume { .. } => (StateChange::Resume, "resumed"),
                _ => (StateChange::Cancel, "cancelled"),
            };
            let ws = open_for_edit(cli)?;
            let r = manifests::change_campaign_state(&ws, id, change)?;
            staged(&r, verb);
            println!(
                "(a campaign file edited from now on needs revision {} or more)",
                r.revision + 1
            );
        }
        CampaignCommand::List { json } => {
            let ws = open(cli)?;
            let manifests::CampaignList {
                campaigns: list,
                unusable,
            } = manifests::list_campaigns(&ws)?;
            if *json {
                let campaigns: Vec<serde_json::Value> = list
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "id": c.id,
                            "revision": c.revision,
                            "state": c.state.to_string(),
                            "policy": c.policy.to_string(),
                            "method": c.method.to_string(),
                            "waves": c.waves,
                            "role": c.role,
                            "publication": publication_word(c.publication),
                            "refused": c.refused,
                        })
                    })
                    .collect();
                let unusable: Vec<serde_json::Value> = unusable
                    .iter()
                    .map(|(target, reason)| serde_json::json!({ "target": target, "reason": reason }))
                    .collect();
                let v = serde_json::json!({ "campaigns": campaigns, "unusable": unusable });
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
                return Ok(());
            }
            if list.is_empty() && unusable.is_empty() {
                println!("no campaigns");
                return Ok(());
            }
            let rows: Vec<[String; 8]> = list
                .iter()
                .map(|c| {
                    [
                        c.id.clone(),
                        c.revision.to_string(),
                        c.state.to_string(),
                        c.policy.to_string(),
                        c.method.to_string(),
                        c.waves.clone(),
                        c.role.clone(),
                        publication_word(c.publication).into(),
                    ]
                })
                .collect();
            let header = [
                "ID", "REVISION", "STATE", "POLICY", "METHOD", "WAVES", "ROLE", "TREE",
            ];
            let mut width = header.map(str::len);
            for r in &rows {
                for (w, cell) in width.iter_mut().zip(r) {
                    *w = (*w).max(cell.len());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut out = String::new();
                for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                    if i + 1 == cells.len() {
                        out.push_str(c);
                    } else {
                        out.push_str(&format!("{c:<w$}  "));
                    }
                }
                println!("{}", out.trim_end());
            };
            line(header.to_vec());
            for r in &rows {
                line(r.iter().map(String::as_str).collect());
            }
            for c in list.iter().filter(|c| c.refused.is_some()) {
                println!(
                    "warning: devices will reject campaign {}: {}",
                    c.id,
                    c.refused.as_deref().unwrap_or_default()
                );
            }
            for (name, why) in &unusable {
                println!("warning: {name} is not a usable campaign: {why}");
            }
            return Ok(());
        }
        CampaignCommand::Show { id, json } => {
            let ws = open(cli)?;
            let d = manifests::campaign_details(&ws, id)?;
            if !*json {
                println!("{}", d.summary());
            }
            println!("{}", d.pretty_json());
            return Ok(());
        }
    }
    println!("run `petrel-repo publish`");
    Ok(())
}

/// Replaces the keys `init` generated for a role with the given ones (the generated
/// private keys are deleted: nothing was published with them).
fn use_given_keys(ws: &Workspace, given: &BTreeMap<String, Vec<Key>>) -> Result<()> {
    let root: Signed<Root> = ws
        .staged("root")?
        .ok_or_else(|| Error::State("init staged no root".into()))?;
    let mut ed = Editor::new(ws);
    let mut generated = Vec::new();
    for (role, keys) in given {
        let old = root
            .signed
            .role(role)
            .map(|r| r.keyids.clone())
            .unwrap_or_default();
        ed.rotate(&RotateSpec {
            role: role.clone(),
            add: keys.clone(),
            remove: old.clone(),
            threshold: None,
        })?;
        generated.extend(old);
    }
    ed.save()?;
    for id in generated {
        let path = ws.keys_dir().join(format!("{id}.pem"));
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

fn check_top_level(role: &str) -> Result<()> {
    if petrel_client::tuf::schema::TOP_LEVEL_ROLES.contains(&role) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{role:?} is not a top-level role (root, targets, snapshot, timestamp)"
        )))
    }
}

fn report(r: publish::PublishReport, tree: PathBuf) {
    if let Some(d) = &r.deltas {
        println!("{d}");
    }
    if r.roles.is_empty() {
        println!("nothing staged; nothing to publish");
        return;
    }
    if r.resumed {
        println!("finished an interrupted publish");
    }
    let roles: Vec<String> = r.roles.iter().map(|(n, v)| format!("{n} v{v}")).collect();
    println!("published {} to {}", roles.join(", "), tree.display());
    println!("{} target file(s) written", r.targets_written);
}

/// Fixes a staged role's bytes for offline signing and returns them.
fn export(ws: &Workspace, role: &str) -> Result<Vec<u8>> {
    fn go<T: Metadata>(ws: &Workspace, role: &str) -> Result<Vec<u8>> {
        let s: Signed<T> = ws
            .staged(role)?
            .ok_or_else(|| Error::role(role, "has no staged changes to export"))?;
        s.to_file_bytes().map_err(|source| Error::Schema {
            path: ws.staged_path(role),
            source,
        })
    }
    match role {
        "root" => go::<Root>(ws, role),
        "snapshot" | "timestamp" => Err(Error::role(
            role,
            "is signed at publish time with online keys",
        )),
        _ => go::<Targets>(ws, role),
    }
}

fn read_signatures(path: &Path) -> Result<Vec<Signature>> {
    let bytes = fsutil::read(path)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Usage(format!("{}: not JSON: {e}", path.display())))?;
    if v.get("signatures").is_some() {
        let env = petrel_client::tuf::schema::RawSigned::from_bytes(&bytes)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        return Ok(env.signatures);
    }
    let sig: Signature = serde_json::from_value(v)
        .map_err(|e| Error::Usage(format!("{}: not a signature file: {e}", path.display())))?;
    Ok(vec![sig])
}

/// `published` or `staged`: the word used in tables and JSON.
fn publication_word(p: manifests::Publication) -> &'static str {
    match p {
        manifests::Publication::Published => "published",
        manifests::Publication::Staged => "staged",
    }
}

fn status(ws: &Workspace, json: bool) -> Result<()> {
    let interrupted = publish::interrupted(ws);
    let mut roles = Vec::new();
    let mut ed = Editor::new(ws);
    for role in ws.staged_roles()? {
        if matches!(role.as_str(), "snapshot" | "timestamp") {
            roles.push(serde_json::json!({
                "role": role,
                "version": null,
                "signatures": null,
                "valid_signatures": null,
                "needs": [],
                "unfinished_publish": true,
            }));
            continue;
        }
        let (version, sigs, valid) = if role == "root" {
            let s: Signed<Root> = ws.staged(&role)?.expect("listed");
            let auths = signing::authorities(&mut ed, &role)?;
            let valid = signing::valid_signers(&s, &auths)?.len();
            (s.signed.version, s.signatures.len(), valid)
        } else {
            let s: Signed<Targets> = ws.staged(&role)?.expect("listed");
            let auths = signing::authorities(&mut ed, &role)?;
            let valid = signing::valid_signers(&s, &auths)?.len();
            (s.signed.version, s.signatures.len(), valid)
        };
        let needs: Vec<serde_json::Value> = signing::authorities(&mut ed, &role)?
            .iter()
            .map(|a| serde_json::json!({ "threshold": a.threshold, "of": a.label }))
            .collect();
        roles.push(serde_json::json!({
            "role": role,
            "version": version,
            "signatures": sigs,
            "valid_signatures": valid,
            "needs": needs,
            "unfinished_publish": false,
        }));
    }
    if json {
        let v = serde_json::json!({ "interrupted_publish": interrupted, "staged": roles });
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(());
    }
    if interrupted {
        println!("a publish was interrupted: run `petrel-repo publish` to finish it");
    }
    if roles.is_empty() {
        println!("nothing staged");
        return Ok(());
    }
    for r in &roles {
        let role = r["role"].as_str().unwrap_or_default();
        if r["unfinished_publish"] == true {
            println!("{role}: staged by an unfinished publish");
            continue;
        }
        let need: Vec<String> = r["needs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                format!(
                    "{} of {}",
                    n["threshold"],
                    n["of"].as_str().unwrap_or_default()
                )
            })
            .collect();
        println!(
            "{role} v{}: {} valid of {} signature(s); needs {}",
            r["version"],
            r["valid_signatures"],
            r["signatures"],
            need.join(" and ")
        );
    }
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn targets_list(ws: &Workspace, role: Option<&str>, json: bool) -> Result<()> {
    let list = petrel_repo::listing::list_targets(ws, role)?;
    if json {
        let v = serde_json::json!({ "targets": list });
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(());
    }
    if list.is_empty() {
        println!("no targets");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.path.clone(),
                t.length.to_string(),
                t.sha256.clone().unwrap_or_else(|| "-".into()),
                t.role.clone(),
                t.publication.to_string(),
            ]
        })
        .collect();
    print_table(&["PATH", "LENGTH", "SHA256", "ROLE", "TREE"], &rows);
    Ok(())
}

/// Above this many manifests, bulk commands print counts instead of one line each.
const MANY: usize = 20;

/// `group set DIR`: every group manifest of the directory in one change.
fn group_set_many(ws: &Workspace, dir: &Path, role: Option<&str>) -> Result<()> {
    let files = manifests::manifest_files(dir)?;
    let b = manifests::set_groups(ws, &files, role)?;
    for n in &b.notes {
        println!("{n}");
    }
    if b.groups.len() <= MANY {
        for r in &b.groups {
            match (r.unchanged, r.previous) {
                (true, _) => println!("{} is unchanged (revision {})", r.target, r.revision),
                (false, p) => {
                    let was = p
                        .map(|p| format!(" (was {p})"))
                        .unwrap_or_else(|| " (new group)".into());
                    println!(
                        "staged {} revision {}{was} in role {}; sha256 {}",
                        r.target, r.revision, r.role, r.sha256
                    );
                }
            }
        }
    }
    println!(
        "{} group manifest(s): {} created, {} revised, {} unchanged",
        b.groups.len(),
        b.created,
        b.revised,
        b.unchanged
    );
    if b.created + b.revised == 0 {
        println!("nothing staged");
    } else {
        println!("run `petrel-repo publish`");
    }
    Ok(())
}

fn group_list(ws: &Workspace, json: bool) -> Result<()> {
    let list = manifests::list_groups(ws)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("serializes")
        );
        return Ok(());
    }
    if list.groups.is_empty() && list.unusable.is_empty() {
        println!("no groups");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .groups
        .iter()
        .map(|g| {
            let apps: Vec<String> = g
                .apps
                .iter()
                .map(|(app, a)| format!("{app} {}", a.version))
                .collect();
            vec![
                g.id.clone(),
                g.revision.to_string(),
                if apps.is_empty() {
                    "-".into()
                } else {
                    apps.join(", ")
                },
                g.role.clone(),
                g.publication.to_string(),
            ]
        })
        .collect();
    print_table(&["ID", "REVISION", "APPS", "ROLE", "TREE"], &rows);
    for u in &list.unusable {
        println!("warning: {} is not a usable group: {}", u.target, u.reason);
    }
    Ok(())
}

fn assign_show(ws: &Workspace, device: &str, json: bool) -> Result<()> {
    manifests::check_device_id(device)?;
    let a = manifests::AssignmentLookup::new(ws).find(device)?;
    if json {
        let v = serde_json::json!({
            "assigned": a.assignment.is_some(),
            "bin": a.bin,
            "target": a.target,
            "role": a.listing.as_ref().map(|l| l.role.clone()),
            "bin_revision": a.listing.as_ref().map(|l| l.revision),
            "publication": a.listing.as_ref().map(|l| publication_word(l.publication)),
            "entry_key": a.entry_key,
            "group": a.assignment.as_ref().map(|x| x.group.clone()),
            "canary": a.assignment.as_ref().is_some_and(|x| x.canary),
            "campaigns": a.assignment.as_ref().map(|x| x.campaigns.clone()).unwrap_or_default(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(());
    }
    let Some(l) = &a.listing else {
        println!(
            "not assigned: the device's bin {} ({}) does not exist yet; assign it with `petrel-repo assign --group G --devices FILE`",
            a.bin, a.target
        );
        return Ok(());
    };
    let bin = format!(
        "bin {} ({}, role {}, revision {}, {})",
        a.bin,
        a.target,
        l.role,
        l.revision,
        publication_word(l.publication)
    );
    match &a.assignment {
        None => println!(
            "not assigned: {bin} does not list the device; assign it with `petrel-repo assign --group G --devices FILE`"
        ),
        Some(x) => {
            println!("assigned in {bin}");
            println!("  entry key: {}", a.entry_key.as_deref().unwrap_or_default());
            println!("  group:     {}", x.group);
            println!("  canary:    {}", if x.canary { "yes" } else { "no" });
            println!(
                "  campaigns: {}",
                if x.campaigns.is_empty() {
                    "none (explicit enrolments only matter for applies_to.assigned_only)".to_string()
                } else {
                    x.campaigns.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            );
        }
    }
    Ok(())
}
