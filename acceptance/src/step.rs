//! Test steps: what to run and what to expect.

use crate::state::State;

/// A planned action on a resource, as in `resource_changes[].change.actions`
/// of `terraform show -json PLAN`. A replacement is `[Delete, Create]`, or
/// `[Create, Delete]` with `create_before_destroy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NoOp,
    Create,
    Read,
    Update,
    Delete,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::NoOp => "no-op",
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

pub(crate) type Check = Box<dyn FnOnce(&State)>;

pub(crate) enum Kind {
    Config { hcl: String, plan_only: bool },
    Import { address: String, id: String, verify_ignore: Vec<String> },
}

/// One step of a [`TestCase`](crate::TestCase), built with the constructors
/// below and refined with the builder methods.
pub struct Step {
    pub(crate) kind: Kind,
    pub(crate) expect: Expect,
}

/// What a step must observe, whatever its kind.
#[derive(Default)]
pub(crate) struct Expect {
    pub(crate) actions: Vec<(String, Vec<Action>)>,
    pub(crate) warnings: Vec<String>,
    pub(crate) errors: Vec<String>,
    pub(crate) checks: Vec<Check>,
    pub(crate) non_empty_plan: bool,
}

impl Step {
    /// Writes `hcl` as `main.tf`, plans, applies the saved plan, runs the
    /// checks on the new state and requires that plans with and without
    /// refresh are then empty.
    pub fn config(hcl: impl Into<String>) -> Self {
        Self::new(Kind::Config { hcl: hcl.into(), plan_only: false })
    }

    /// Writes `hcl` as `main.tf` and only plans: expected actions, warnings
    /// and errors are checked, nothing is applied and no plan needs to be empty.
    pub fn plan_only(hcl: impl Into<String>) -> Self {
        Self::new(Kind::Config { hcl: hcl.into(), plan_only: true })
    }

    /// In a fresh working directory with the config of the last applied step, runs
    /// `terraform import ADDRESS ID` and requires the imported attributes to
    /// equal those of `address` in the case's state (see [`Step::verify_ignore`]).
    /// Checks run on the imported state.
    pub fn import(address: impl Into<String>, id: impl Into<String>) -> Self {
        Self::new(Kind::Import { address: address.into(), id: id.into(), verify_ignore: Vec::new() })
    }

    /// The plan must contain exactly these actions for `address`.
    pub fn expect_actions(mut self, address: impl Into<String>, actions: &[Action]) -> Self {
        self.require_plan("expect_actions");
        self.expect.actions.push((address.into(), actions.to_vec()));
        self
    }

    /// The plan output must contain `text` (whitespace-insensitive, because
    /// Terraform wraps diagnostics at 78 columns).
    pub fn expect_warning(mut self, text: impl Into<String>) -> Self {
        self.require_plan("expect_warning");
        self.expect.warnings.push(text.into());
        self
    }

    /// The step must fail (at plan, or at apply if the plan succeeds; for an
    /// import step, the import) and the output must contain `text`
    /// (whitespace-insensitive). May be given several times.
    pub fn expect_error(mut self, text: impl Into<String>) -> Self {
        self.expect.errors.push(text.into());
        self
    }

    /// Runs `check` on the state after apply (after import for import steps);
    /// it reports failure by panicking.
    pub fn check(mut self, check: impl FnOnce(&State) + 'static) -> Self {
        self.expect.checks.push(Box::new(check));
        self
    }

    /// Accept non-empty plans after apply instead of failing the step.
    pub fn expect_non_empty_plan(mut self) -> Self {
        if !matches!(self.kind, Kind::Config { plan_only: false, .. }) {
            panic!("expect_non_empty_plan only applies to Step::config");
        }
        self.expect.non_empty_plan = true;
        self
    }

    /// Attribute path prefixes (as in [`State::get`]; list/map sizes are
    /// `path.#`/`path.%`) that import verification skips, for values the
    /// provider cannot read back.
    pub fn verify_ignore(mut self, prefixes: &[&str]) -> Self {
        match &mut self.kind {
            Kind::Import { verify_ignore, .. } => verify_ignore.extend(prefixes.iter().map(|p| (*p).to_owned())),
            Kind::Config { .. } => panic!("verify_ignore only applies to Step::import"),
        }
        self
    }

    fn new(kind: Kind) -> Self {
        Step { kind, expect: Expect::default() }
    }

    /// Misuse is a bug in the test, reported where the step is built.
    fn require_plan(&self, method: &str) {
        if matches!(self.kind, Kind::Import { .. }) {
            panic!("{method} does not apply to Step::import");
        }
    }
}
