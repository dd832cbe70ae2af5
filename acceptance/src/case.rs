//! A test case: one provider launch, one working directory, steps run in order.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use crate::provider::{self, ReattachedProvider};
use crate::state::{self, State};
use crate::step::{Action, Expect, Kind, Step};
use crate::terraform::{self, Run, Terraform};

/// How Terraform reaches the provider for the whole test case.
///
/// No mode needs `terraform init` as long as configs use only this provider
/// and Terraform's built-in one (`terraform_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Terraform starts the provider itself, found through a CLI config
    /// `dev_overrides` entry, and talks to it over AutoMTLS as in production.
    DevOverrides,
    /// As [`Launch::DevOverrides`] with `TF_DISABLE_PLUGIN_TLS=1`: plaintext gRPC.
    DevOverridesPlaintext,
    /// The harness starts one provider process for the case and hands it to
    /// every terraform command through `TF_REATTACH_PROVIDERS` (plaintext).
    Reattach,
    /// No provider binary at all: configs may use only Terraform's built-in
    /// provider. For testing the harness itself.
    BuiltinOnly,
}

/// A sequence of steps against one Terraform working directory.
///
/// Dropping a case that still has applied resources runs
/// `terraform destroy` (best effort), then stops a reattached provider.
pub struct TestCase {
    terraform: Terraform,
    work: PathBuf,
    /// The config of the last successful apply: what import steps use, and
    /// what `main.tf` is reset to before destroying, since a later failing or
    /// plan-only step may have left a config that cannot even plan.
    applied_config: Option<String>,
    imports: usize,
    needs_destroy: bool,
    // Only held to be dropped: after `Drop::drop`, so the cleanup destroy can
    // still reach the provider, and before `root`, which holds its files.
    _provider: Option<ReattachedProvider>,
    root: TempDir,
}

impl TestCase {
    /// Creates the temp directory and CLI config, and for provider launches
    /// gets the provider binary (building it if needed) and, for
    /// [`Launch::Reattach`], starts it. Panics if any of that fails.
    pub fn new(launch: Launch) -> Self {
        TestCase::with_env(launch, Vec::new())
    }

    /// As [`TestCase::new`], with `env` added to every terraform command
    /// (and so to the provider it starts): a local cloud's endpoints and
    /// credentials, as a user's shell would hold them.
    pub fn with_env(launch: Launch, extra: Vec<(&str, String)>) -> Self {
        terraform::ensure_available();
        let root = tempfile::Builder::new()
            .prefix("trellis-acceptance-")
            .tempdir()
            .expect("cannot create the test case's temp dir");
        let work = root.path().join("work");
        fs::create_dir(&work).unwrap_or_else(|e| panic!("cannot create {}: {e}", work.display()));

        let cli_config_path = root.path().join("cli.tfrc");
        let mut env: Vec<(OsString, OsString)> = vec![
            ("CHECKPOINT_DISABLE".into(), "1".into()),
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            ("TF_CLI_CONFIG_FILE".into(), cli_config_path.clone().into()),
        ];
        env.extend(extra.into_iter().map(|(k, v)| (k.into(), v.into())));
        let (mut provider, mut provider_log) = (None, None);
        let cli_config = match launch {
            Launch::BuiltinOnly => String::new(),
            Launch::Reattach => {
                let log = root.path().join("provider.stderr");
                let started = ReattachedProvider::start(provider::binary(), root.path(), &log);
                env.push(("TF_REATTACH_PROVIDERS".into(), started.reattach().into()));
                provider = Some(started);
                provider_log = Some(log);
                String::new()
            }
            Launch::DevOverrides | Launch::DevOverridesPlaintext => {
                if launch == Launch::DevOverridesPlaintext {
                    env.push(("TF_DISABLE_PLUGIN_TLS".into(), "1".into()));
                }
                dev_overrides_config(root.path())
            }
        };
        write(&cli_config_path, &cli_config);

        TestCase {
            terraform: Terraform::new(env, provider_log),
            work,
            applied_config: None,
            imports: 0,
            needs_destroy: false,
            _provider: provider,
            root,
        }
    }

    /// Runs one step, panicking with terraform's output if it does not go as
    /// expected. See the [`Step`] constructors for what each kind does.
    pub fn step(&mut self, step: Step) {
        let Step { kind, expect } = step;
        match kind {
            Kind::Config { hcl, plan_only } => self.config_step(&hcl, plan_only, expect),
            Kind::Import { address, id, verify_ignore } => self.import_step(&address, &id, &verify_ignore, expect),
        }
    }

    /// A scratch directory that lives as long as the case, outside the
    /// working directory, for files a test hands to terraform (import
    /// bundles and the like).
    pub fn scratch_dir(&self) -> &Path {
        self.root.path()
    }

    /// The current state (`terraform show -json`).
    pub fn state(&self) -> State {
        self.state_in(&self.work)
    }

    /// Root module output values by name (`terraform output -json`, without
    /// the `sensitive`/`type` wrappers).
    pub fn outputs(&self) -> BTreeMap<String, Value> {
        let run = self.terraform.run_ok(&self.work, "output", &["-json"]);
        let outputs: BTreeMap<String, Value> = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| self.terraform.fail(&format!("output is not a JSON object: {e}"), &run));
        outputs.into_iter().map(|(name, output)| (name, output["value"].clone())).collect()
    }

    /// Runs `terraform destroy`, requires that the state is then empty, and
    /// calls `check` with the state from before the destroy, so it can verify
    /// the remote objects are gone.
    pub fn destroy_and_check(&mut self, check: impl FnOnce(&State)) {
        let before = self.state();
        let run = self.destroy().unwrap_or_else(|message| panic!("{message}"));
        if !run.succeeded() {
            self.terraform.fail("terraform destroy failed", &run);
        }
        self.needs_destroy = false;
        let after = self.state();
        if !after.is_empty() {
            let left: Vec<_> = after.addresses().collect();
            self.terraform.fail(&format!("resources left in state after destroy: {left:?}"), &run);
        }
        check(&before);
    }

    /// `terraform plan -refresh-only` with the last applied config, as a
    /// pipeline's drift check runs it: the plan's `resource_drift` entries
    /// (each with `address` and `change.before`/`change.after`). Nothing is
    /// applied, so state and the remote objects stay as they are.
    pub fn refresh_only_drift(&self) -> Vec<Value> {
        let run = self.terraform.run(&self.work, "plan", &["-refresh-only", "-out=refresh.tfplan"]);
        if !run.succeeded() {
            self.terraform.fail("terraform plan -refresh-only failed", &run);
        }
        let shown = self.terraform.run_ok(&self.work, "show", &["-json", "refresh.tfplan"]);
        let plan: Value = serde_json::from_str(&shown.stdout)
            .unwrap_or_else(|e| self.terraform.fail(&format!("show -json is not JSON: {e}"), &shown));
        plan["resource_drift"].as_array().cloned().unwrap_or_default()
    }

    fn config_step(&mut self, hcl: &str, plan_only: bool, expect: Expect) {
        write(&self.work.join("main.tf"), hcl);

        let plan = self.terraform.run(&self.work, "plan", &["-out=tfplan"]);
        if !plan.succeeded() {
            return self.expect_failure(&expect.errors, &plan);
        }
        let shown = self.terraform.run_ok(&self.work, "show", &["-json", "tfplan"]);
        let planned = state::planned_actions(&shown.stdout).unwrap_or_else(|e| self.terraform.fail(&e, &shown));
        for (address, expected) in &expect.actions {
            let expected: Vec<&str> = expected.iter().map(|a| Action::as_str(*a)).collect();
            match planned.get(address) {
                Some(actual) if *actual == expected => {}
                Some(actual) => self.terraform.fail(&format!("{address}: expected actions {expected:?}, planned {actual:?}"), &plan),
                None => self.terraform.fail(
                    &format!("{address}: expected actions {expected:?}, but the plan has no such resource; it has {planned:?}"),
                    &plan,
                ),
            }
        }
        for warning in &expect.warnings {
            if !contains_text(&plan.text(), warning) {
                self.terraform.fail(&format!("expected a warning containing {warning:?} in the plan output"), &plan);
            }
        }
        if plan_only {
            if !expect.errors.is_empty() {
                self.terraform
                    .fail(&format!("expected an error containing {:?}, but the plan succeeded", expect.errors), &plan);
            }
            return;
        }

        let apply = self.terraform.run(&self.work, "apply", &["tfplan"]);
        // Even a failed apply may have created objects.
        self.needs_destroy = true;
        if !apply.succeeded() {
            return self.expect_failure(&expect.errors, &apply);
        }
        self.applied_config = Some(hcl.to_owned());
        if !expect.errors.is_empty() {
            self.terraform.fail(
                &format!("expected an error containing {:?}, but plan and apply succeeded", expect.errors),
                &apply,
            );
        }
        let state = self.state();
        for check in expect.checks {
            check(&state);
        }
        self.expect_empty_plan(&["-refresh=false"], "non-refresh", expect.non_empty_plan);
        self.expect_empty_plan(&[], "refresh", expect.non_empty_plan);
    }

    fn import_step(&mut self, address: &str, id: &str, ignore: &[String], expect: Expect) {
        let Some(config) = &self.applied_config else {
            panic!("Step::import needs an earlier applied config step: it imports with that config");
        };
        self.imports += 1;
        // A fresh directory, as terraform-plugin-testing does: importing must
        // work without the state the case built.
        let dir = self.root.path().join(format!("import-{}", self.imports));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        write(&dir.join("main.tf"), config);

        let import = self.terraform.run(&dir, "import", &[address, id]);
        if !import.succeeded() {
            return self.expect_failure(&expect.errors, &import);
        }
        if !expect.errors.is_empty() {
            self.terraform
                .fail(&format!("expected an error containing {:?}, but the import succeeded", expect.errors), &import);
        }

        let original = self.state();
        let imported = self.state_in(&dir);
        let Some(before) = original.resource(address) else {
            let present: Vec<_> = original.addresses().collect();
            panic!("cannot verify the import: {address} is not in the case's state, which holds {present:?}");
        };
        let Some(after) = imported.resource(address) else {
            self.terraform.fail(&format!("the import succeeded but {address} is not in the imported state"), &import);
        };
        let differences = differences(before, after, ignore);
        if !differences.is_empty() {
            self.terraform.fail(
                &format!(
                    "imported attributes of {address} differ from the applied ones (path: applied vs imported):\n{}",
                    differences.join("\n")
                ),
                &import,
            );
        }
        for check in expect.checks {
            check(&imported);
        }
    }

    fn expect_failure(&self, errors: &[String], run: &Run) {
        if errors.is_empty() {
            self.terraform.fail("terraform command failed", run);
        }
        for error in errors {
            if !contains_text(&run.text(), error) {
                self.terraform
                    .fail(&format!("the step failed as expected, but not with an error containing {error:?}"), run);
            }
        }
    }

    /// terraform-plugin-testing's post-apply consistency checks: a provider
    /// whose read or plan disagrees with what it applied shows up here.
    fn expect_empty_plan(&self, args: &[&str], kind: &str, allow_changes: bool) {
        let mut args = args.to_vec();
        args.push("-detailed-exitcode");
        let run = self.terraform.run(&self.work, "plan", &args);
        match run.code {
            Some(0) => {}
            Some(2) if allow_changes => {}
            Some(2) => self.terraform.fail(&format!("after applying this step, the {kind} plan was not empty"), &run),
            _ => self.terraform.fail(&format!("the {kind} plan after applying this step failed"), &run),
        }
    }

    /// `terraform destroy` with the last applied config; `Err` only if it
    /// could not be run.
    fn destroy(&self) -> Result<Run, String> {
        if let Some(config) = &self.applied_config {
            let main = self.work.join("main.tf");
            fs::write(&main, config).map_err(|e| format!("cannot write {}: {e}", main.display()))?;
        }
        self.terraform.try_run(&self.work, "destroy", &["-auto-approve"])
    }

    fn state_in(&self, dir: &Path) -> State {
        let run = self.terraform.run_ok(dir, "show", &["-json"]);
        State::parse(&run.stdout).unwrap_or_else(|e| self.terraform.fail(&e, &run))
    }
}

impl Drop for TestCase {
    fn drop(&mut self) {
        if !self.needs_destroy {
            return;
        }
        // Never panic here: this also runs while a failed test unwinds.
        match self.destroy() {
            Ok(run) if run.succeeded() => {}
            Ok(run) => eprintln!("cleanup destroy failed, objects may be left behind:\n{run}"),
            Err(message) => {
                eprintln!("cleanup destroy failed, objects may be left behind: {message}")
            }
        }
    }
}

/// A CLI config overriding `trellis/kube` with a directory holding only the
/// provider binary: Terraform takes the first `terraform-provider-kube*` file
/// in the directory, and cargo's target dir also holds
/// `terraform-provider-kube.d`; `$TRELLIS_PROVIDER_BIN` may have any name.
fn dev_overrides_config(root: &Path) -> String {
    let plugins = root.join("plugins");
    fs::create_dir(&plugins).unwrap_or_else(|e| panic!("cannot create {}: {e}", plugins.display()));
    let binary = provider::binary();
    let link = plugins.join(provider::EXECUTABLE_NAME);
    std::os::unix::fs::symlink(binary, &link)
        .unwrap_or_else(|e| panic!("cannot link {} to {}: {e}", link.display(), binary.display()));
    // A JSON string is a valid HCL string for any path without `${` or `%{`,
    // which temp dirs never contain.
    let dir = serde_json::to_string(&plugins).expect("a path serializes to a JSON string");
    format!(
        "provider_installation {{\n  dev_overrides {{\n    \"{}\" = {dir}\n  }}\n  direct {{}}\n}}\n",
        provider::SHORT_SOURCE
    )
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Substring match ignoring differences in whitespace, because Terraform
/// re-wraps diagnostic text.
fn contains_text(haystack: &str, needle: &str) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    squash(haystack).contains(&squash(needle))
}

/// `path: before vs after` for every flattened attribute that differs,
/// skipping paths that start with one of `ignore`.
fn differences(before: &Value, after: &Value, ignore: &[String]) -> Vec<String> {
    let (before, after) = (state::flatten(before), state::flatten(after));
    let absent = Value::String("<absent>".to_owned());
    before
        .keys()
        .chain(after.keys().filter(|k| !before.contains_key(*k)))
        .filter(|path| !ignore.iter().any(|prefix| path.starts_with(prefix.as_str())))
        .filter_map(|path| {
            let (b, a) = (before.get(path).unwrap_or(&absent), after.get(path).unwrap_or(&absent));
            (b != a).then(|| format!("  {path}: {b} vs {a}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_match_ignores_rewrapping() {
        assert!(contains_text(
            "A managed resource has not been declared in the root\nmodule.",
            "declared in the root module"
        ));
        assert!(!contains_text("declared in the root", "declared in the root module"));
    }

    #[test]
    fn differences_skip_ignored_prefixes() {
        let before = json!({"id": "x", "key_pem": "secret", "tags": ["a"]});
        let after = json!({"id": "x", "key_pem": null, "tags": ["a", "b"]});
        assert_eq!(
            differences(&before, &after, &["key_pem".to_owned()]),
            ["  tags.#: 1 vs 2", "  tags.1: \"<absent>\" vs \"b\""]
        );
    }
}
