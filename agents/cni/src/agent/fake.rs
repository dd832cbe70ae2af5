//! A scripted node agent for the plugin's tests: records every call, answers from a table.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::protocol::{AllocateArgs, Allocated, CheckArgs, Endpoint, Op};
use super::{Agent, AgentError};
use crate::attachment::Attachment;

#[derive(Debug)]
pub struct FakeAgent {
    pub present: bool,
    /// Refuses every call with this code and message.
    pub refuse: Option<(u32, &'static str)>,
    pub calls: RefCell<Vec<Op>>,
    pub leases: RefCell<BTreeMap<Attachment, Ipv4Addr>>,
    pub next_ip: Ipv4Addr,
    pub routes: Vec<Ipv4Net>,
}

impl FakeAgent {
    pub fn present() -> Self {
        Self {
            present: true,
            refuse: None,
            calls: RefCell::default(),
            leases: RefCell::default(),
            next_ip: Ipv4Addr::new(10, 1, 2, 3),
            routes: vec![Ipv4Net::default()],
        }
    }

    pub fn absent() -> Self {
        Self { present: false, ..Self::present() }
    }

    fn answer(&self, op: Op) -> Result<(), AgentError> {
        if !self.present {
            return Err(AgentError::Absent { socket: PathBuf::from("/run/trellis/agent.sock") });
        }
        self.calls.borrow_mut().push(op);
        match self.refuse {
            Some((code, msg)) => Err(AgentError::Refused { code, msg: msg.to_owned() }),
            None => Ok(()),
        }
    }
}

impl Agent for FakeAgent {
    fn allocate(&self, args: &AllocateArgs) -> Result<Allocated, AgentError> {
        self.answer(Op::Allocate(args.clone()))?;
        let key = Attachment::new(args.container_id.clone(), args.ifname.clone());
        let ip = *self.leases.borrow_mut().entry(key).or_insert(self.next_ip);
        Ok(Allocated { ip, gateway: Ipv4Addr::new(169, 254, 1, 1), routes: self.routes.clone() })
    }

    fn check(&self, args: &CheckArgs) -> Result<(), AgentError> {
        self.answer(Op::Check(args.clone()))?;
        let key = Attachment::new(args.container_id.clone(), args.ifname.clone());
        match self.leases.borrow().get(&key) {
            Some(ip) if *ip == args.ip => Ok(()),
            _ => Err(AgentError::Refused { code: 102, msg: format!("{key:?} does not hold {}", args.ip) }),
        }
    }

    fn register_endpoint(&self, endpoint: &Endpoint) -> Result<(), AgentError> {
        self.answer(Op::RegisterEndpoint(endpoint.clone()))
    }

    fn release(&self, attachment: &Attachment) -> Result<(), AgentError> {
        self.answer(Op::Release(attachment.clone()))?;
        self.leases.borrow_mut().remove(attachment);
        Ok(())
    }

    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Attachment>, AgentError> {
        self.answer(Op::Gc(super::protocol::GcArgs { valid_attachments: valid.to_vec() }))?;
        let mut leases = self.leases.borrow_mut();
        let released: Vec<Attachment> = leases.keys().filter(|a| !valid.contains(a)).cloned().collect();
        leases.retain(|a, _| valid.contains(a));
        Ok(released)
    }

    fn status(&self) -> Result<(), AgentError> {
        self.answer(Op::Status {})
    }
}
