//! What a simulated run injected, for scoring a backtest against it.

use serde::{Deserialize, Serialize};

use super::{Injected, Simulator};
use crate::incident::Scope;
use crate::time::Millis;

/// Labels of a simulated run, for scoring a backtest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Labels {
    pub window_ms: Millis,
    pub incidents: Vec<LabelledIncident>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelledIncident {
    #[serde(flatten)]
    pub injected: Injected,
    /// Scopes the detector should raise.
    pub scopes: Vec<Scope>,
    pub metrics: Vec<String>,
}

impl Labels {
    pub fn of(sim: &Simulator, window_ms: Millis) -> Self {
        Labels {
            window_ms,
            incidents: sim
                .incidents()
                .iter()
                .map(|i| LabelledIncident {
                    injected: i.clone(),
                    scopes: i.scopes(sim.locations()),
                    metrics: i.kind.metrics().iter().map(|m| m.to_string()).collect(),
                })
                .collect(),
        }
    }
}
