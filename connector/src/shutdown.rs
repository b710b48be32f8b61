//! A cloneable shutdown signal passed into `run`.

use tokio::sync::watch;

/// Fires the [`Shutdown`] signals made with it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Asks every holder of the paired [`Shutdown`] to drain and stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// A shutdown signal; cheap to clone. Dropping the trigger never fires it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A new trigger and its signal.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is requested (never, if the trigger was dropped unfired).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
