//! Sluice's domain model: identifiers, definitions, runs, their state
//! machines and the DAG. No I/O lives here (no tokio, diesel or tonic): every
//! decision the engine makes is a function over these types, tested in-module.

pub mod dag;
pub mod dispatch;
pub mod heartbeat;
pub mod ids;
pub mod model;
pub mod plan;
pub mod queue;
pub mod state;

pub use dag::{Dag, DagError, EdgeCondition, TaskNode};
pub use dispatch::{QueueTicket, TaskDispatch};
pub use heartbeat::{MasterHeartbeat, WorkerHeartbeat};
pub use ids::*;
pub use model::*;
pub use plan::RunView;
pub use queue::QueueKey;
pub use state::{
    InvalidTransition, TaskEvent, TaskState, WorkflowEvent, WorkflowState,
};
