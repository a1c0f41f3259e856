//! The runtime API as the sink uses it: a trait over [`Client`], so the sink's bookkeeping can
//! be driven in-process by a fake HAProxy on a paused clock.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Address, Client, Error, Info, Stat, WeightChange, WeightOutcome};
use crate::controller::ServerKey;

/// The runtime-API calls the HAProxy sink makes.
pub trait RuntimeApi: Send + Sync {
    fn address(&self) -> &Address;
    /// Every later call is bounded by `timeout` (a reloaded config).
    fn set_timeout(&mut self, timeout: Duration);
    fn show_info(&self) -> BoxFuture<'_, Result<Info, Error>>;
    fn show_stat(&self) -> BoxFuture<'_, Result<Stat, Error>>;
    /// Each server's initial (config) weight; empty when this API cannot tell.
    fn initial_weights(&self) -> BoxFuture<'_, Result<HashMap<ServerKey, u32>, Error>> {
        Box::pin(async { Ok(HashMap::new()) })
    }
    /// Ok when the socket is at `level admin`.
    fn check_admin(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// One outcome per change, in order (see [`Client::set_weights`]).
    fn set_weights<'a>(
        &'a self,
        changes: &'a [WeightChange],
    ) -> BoxFuture<'a, Result<Vec<WeightOutcome>, Error>>;
}

impl RuntimeApi for Client {
    fn address(&self) -> &Address {
        Client::address(self)
    }

    fn set_timeout(&mut self, timeout: Duration) {
        *self = Client::new(self.address().clone(), timeout);
    }

    fn show_info(&self) -> BoxFuture<'_, Result<Info, Error>> {
        Box::pin(Client::show_info(self))
    }

    fn show_stat(&self) -> BoxFuture<'_, Result<Stat, Error>> {
        Box::pin(Client::show_stat(self))
    }

    fn check_admin(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Client::check_admin(self))
    }

    fn initial_weights(&self) -> BoxFuture<'_, Result<HashMap<ServerKey, u32>, Error>> {
        Box::pin(Client::initial_weights(self))
    }

    fn set_weights<'a>(
        &'a self,
        changes: &'a [WeightChange],
    ) -> BoxFuture<'a, Result<Vec<WeightOutcome>, Error>> {
        Box::pin(Client::set_weights(self, changes))
    }
}
