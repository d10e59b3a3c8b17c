//! A host written in plain Rust, with a bank-account behaviour: for the core's own tests and
//! benchmarks, and as the reference for what a host does. Not used by the Python bindings.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::engine::Engine;
use crate::entity::Dispatched;
use crate::envelope::{Any, Event};
use crate::error::Error;
use crate::future::BoxFuture;
use crate::host::{Fail, Host, Kind};
use crate::store::memory::MemoryStore;
use crate::store::{EventsStore, IdPage, ShardHead};

/// Account state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    pub balance: i64,
}

/// Commands of the test behaviour.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// One `Credited` event.
    Credit(i64),
    /// One `Debited` event; rejected when the balance would go negative.
    Debit(i64),
    /// Several `Credited` events from one command.
    CreditMany(Vec<i64>),
    /// No events.
    Noop,
    /// `handle_event` fails on the second of two events (after changing the state).
    BreakHalfway,
    /// Credit tagged with (sender, index): the behaviour records the order it saw.
    Tagged(usize, usize),
    /// Durable state: set the balance.
    Set(i64),
}

/// Events of the test behaviour.
#[derive(Debug, Clone)]
pub enum Ev {
    Credited(i64),
    Debited(i64),
    Poison,
}

/// The behaviour: one shared instance records what it saw, so tests can check ordering and
/// exclusivity.
#[derive(Default)]
pub struct Bank {
    busy: AtomicBool,
    /// Set when two commands of one entity ever ran at the same time.
    pub overlapped: AtomicBool,
    pub commands: AtomicUsize,
    pub seen: Mutex<Vec<(usize, usize)>>,
}

/// Behaviour handle for one entity.
#[derive(Clone)]
pub struct BankRef {
    pub bank: Arc<Bank>,
    pub kind: Kind,
}

/// The outcome of a command of the test host.
pub type Outcome = Result<(Account, u64), Fail<String>>;

/// Reply slot a test thread waits on.
#[derive(Default)]
pub struct Slot {
    value: Mutex<Option<Outcome>>,
    ready: Condvar,
}

impl Slot {
    /// Waits for the outcome.
    pub fn wait(&self, timeout: Duration) -> Result<(Account, u64), Fail<String>> {
        let mut v = self.value.lock();
        while v.is_none() {
            if self.ready.wait_for(&mut v, timeout).timed_out() {
                return Err(Fail::Engine(Error::Timeout { id: "?".into(), seconds: timeout.as_secs_f64(), started: true }));
            }
        }
        v.take().expect("value")
    }
}

/// The Rust host.
#[derive(Default)]
pub struct TestHost;

fn encode_event(ev: &Ev) -> Any {
    let (name, amount) = match ev {
        Ev::Credited(a) => ("test.Credited", *a),
        Ev::Debited(a) => ("test.Debited", *a),
        Ev::Poison => ("test.Poison", 0),
    };
    Any::new(format!("type.googleapis.com/{name}"), Bytes::from(amount.to_le_bytes().to_vec()))
}

fn amount(any: &Any) -> i64 {
    i64::from_le_bytes(any.value.as_ref().try_into().unwrap_or([0; 8]))
}

impl Host for TestHost {
    type Cx<'a> = ();
    type Behavior = BankRef;
    type Factory = BankRef;
    type State = Account;
    type Command = Cmd;
    type Events<'a> = Vec<Ev>;
    type Failure = String;
    type Reply = Arc<Slot>;
    type Output = (Account, u64);
    type Trace = ();

    fn enter<R>(&self, f: impl for<'a> FnOnce(Self::Cx<'a>) -> R) -> R {
        f(())
    }

    fn end_batch(&self, _cx: ()) {}

    fn create(&self, _cx: (), factory: &BankRef, _id: &str) -> Result<(BankRef, Kind), Fail<String>> {
        Ok((factory.clone(), factory.kind))
    }

    fn initial_state(&self, _cx: (), _b: &BankRef) -> Result<Account, Fail<String>> {
        Ok(Account::default())
    }

    fn handle_command<'a>(&self, _cx: Self::Cx<'a>, b: &BankRef, command: &Cmd, state: &Account) -> Result<Vec<Ev>, Fail<String>>
    where
        Self: 'a,
    {
        if b.bank.busy.swap(true, Ordering::AcqRel) {
            b.bank.overlapped.store(true, Ordering::Release);
        }
        b.bank.commands.fetch_add(1, Ordering::Relaxed);
        std::thread::yield_now();
        let out = match command {
            Cmd::Credit(a) => Ok(vec![Ev::Credited(*a)]),
            Cmd::Debit(a) if *a > state.balance => Err(Fail::Handler(format!("insufficient funds: {} < {a}", state.balance))),
            Cmd::Debit(a) => Ok(vec![Ev::Debited(*a)]),
            Cmd::CreditMany(v) => Ok(v.iter().map(|a| Ev::Credited(*a)).collect()),
            Cmd::Noop => Ok(vec![]),
            Cmd::BreakHalfway => Ok(vec![Ev::Credited(1000), Ev::Poison]),
            Cmd::Tagged(sender, i) => {
                b.bank.seen.lock().push((*sender, *i));
                Ok(vec![Ev::Credited(1)])
            }
            Cmd::Set(_) => Err(Fail::Engine(Error::contract("Set is for durable state"))),
        };
        b.bank.busy.store(false, Ordering::Release);
        out
    }

    fn encode_events(&self, _cx: (), events: &Vec<Ev>, max_bytes: usize, out: &mut Vec<Any>) -> Result<(), Fail<String>> {
        for ev in events {
            let any = encode_event(ev);
            if any.value.len() > max_bytes {
                return Err(Fail::Engine(Error::TooLarge { what: "event", size: any.value.len(), limit: max_bytes }));
            }
            out.push(any);
        }
        Ok(())
    }

    fn apply_events(&self, _cx: (), _b: &BankRef, events: Vec<Ev>, mut state: Account) -> Result<Account, Fail<String>> {
        for ev in events {
            match ev {
                Ev::Credited(a) => state.balance += a,
                Ev::Debited(a) => state.balance -= a,
                Ev::Poison => return Err(Fail::Handler("poison event".into())),
            }
        }
        Ok(state)
    }

    fn apply_stored(&self, _cx: (), _b: &BankRef, event: &Event, mut state: Account) -> Result<Account, Fail<String>> {
        let any = event.event.as_ref().ok_or_else(|| Fail::Engine(Error::contract("event without payload")))?;
        match crate::envelope::type_name(&any.type_url) {
            "test.Credited" => state.balance += amount(any),
            "test.Debited" => state.balance -= amount(any),
            other => {
                return Err(Fail::Engine(Error::UnknownEventType {
                    persistence_id: event.persistence_id.as_str().into(),
                    sequence_number: event.sequence_number,
                    type_url: other.into(),
                }))
            }
        }
        Ok(state)
    }

    fn handle_durable(&self, _cx: (), _b: &BankRef, command: &Cmd, state: &Account) -> Result<Option<Account>, Fail<String>> {
        match command {
            Cmd::Set(v) => Ok(Some(Account { balance: *v })),
            Cmd::Credit(a) => Ok(Some(Account { balance: state.balance + a })),
            Cmd::Noop => Ok(None),
            Cmd::Debit(a) if *a > state.balance => Err(Fail::Handler("insufficient funds".into())),
            Cmd::Debit(a) => Ok(Some(Account { balance: state.balance - a })),
            _ => Err(Fail::Handler("unsupported".into())),
        }
    }

    fn exclusive_state(&self, _cx: (), state: Account) -> Result<Account, Fail<String>> {
        Ok(state)
    }

    fn encode_state(&self, _cx: (), state: &Account, _max: usize) -> Result<Any, Fail<String>> {
        Ok(Any::new("type.googleapis.com/test.Account", Bytes::from(state.balance.to_le_bytes().to_vec())))
    }

    fn decode_state(&self, _cx: (), _b: &BankRef, _id: &str, _revision: u64, state: &Any) -> Result<Account, Fail<String>> {
        Ok(Account { balance: amount(state) })
    }

    fn output(&self, _cx: (), state: &Account, revision: u64) -> (Account, u64) {
        (*state, revision)
    }

    fn begin(&self, _cx: (), _reply: &Arc<Slot>) -> bool {
        true
    }

    fn reply(&self, reply: Arc<Slot>, outcome: Result<(Account, u64), Fail<String>>) {
        *reply.value.lock() = Some(outcome);
        reply.ready.notify_all();
    }

    fn clone_failure(&self, _cx: (), failure: &String) -> String {
        failure.clone()
    }

    fn recovery_failure(&self, _cx: (), id: &str, failure: String) -> String {
        format!("recovery of {id} failed: {failure}")
    }
}

/// Sends a command and waits for its outcome.
pub fn ask(engine: &Engine<TestHost>, id: &str, command: Cmd) -> Result<(Account, u64), Fail<String>> {
    let slot = Arc::new(Slot::default());
    match engine.send((), id, command, slot.clone())? {
        Dispatched::Done(outcome) => outcome,
        Dispatched::Queued => slot.wait(Duration::from_secs(30)),
    }
}

/// Queries the confirmed state.
pub fn state_of(engine: &Engine<TestHost>, id: &str) -> Result<(Account, u64), Fail<String>> {
    let slot = Arc::new(Slot::default());
    match engine.query((), id, slot.clone())? {
        Dispatched::Done(outcome) => outcome,
        Dispatched::Queued => slot.wait(Duration::from_secs(30)),
    }
}

/// What a [`WriteHook`] does with a write: it gets the events and the in-memory store behind it.
pub type OnWrite = dyn Fn(&MemoryStore, Vec<Event>) -> BoxFuture<'static, crate::Result<()>> + Send + Sync;

/// An in-memory events store whose writes go through a hook (to fail them, or slow them down);
/// everything else is the in-memory store's.
#[derive(Clone)]
pub struct WriteHook {
    inner: MemoryStore,
    on_write: Arc<OnWrite>,
}

impl WriteHook {
    pub fn new(on_write: impl Fn(&MemoryStore, Vec<Event>) -> BoxFuture<'static, crate::Result<()>> + Send + Sync + 'static) -> Self {
        WriteHook { inner: MemoryStore::new(), on_write: Arc::new(on_write) }
    }
}

impl EventsStore for WriteHook {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, crate::Result<()>> {
        (self.on_write)(&self.inner, events)
    }
    fn replay_events(&self, p: &str, f: u64, t: u64, m: u64) -> BoxFuture<'static, crate::Result<Vec<Event>>> {
        self.inner.replay_events(p, f, t, m)
    }
    fn highest_sequence_number(&self, p: &str) -> BoxFuture<'static, crate::Result<u64>> {
        self.inner.highest_sequence_number(p)
    }
    fn delete_events(&self, p: &str, t: u64) -> BoxFuture<'static, crate::Result<()>> {
        self.inner.delete_events(p, t)
    }
    fn persistence_ids(&self, n: usize, a: Option<String>) -> BoxFuture<'static, crate::Result<IdPage>> {
        self.inner.persistence_ids(n, a)
    }
    fn shard_events(&self, s: u32, a: u64, m: usize) -> BoxFuture<'static, crate::Result<Vec<Event>>> {
        self.inner.shard_events(s, a, m)
    }
    fn shard_heads(&self) -> BoxFuture<'static, crate::Result<Vec<ShardHead>>> {
        self.inner.shard_heads()
    }
}
