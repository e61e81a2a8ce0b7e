//! Port forwards and the network's view of running VMs, on the [`Manager`].
//!
//! A forward is a durable row (the store keeps a host port unique per protocol across all VMs)
//! plus, while its VM is attached to the network, a listener owned by the network backend
//! ([`VmNetwork::publish`]). Adding one claims the row first, then publishes; a publish that
//! fails (the port is held by another program) removes the row again, so a refused forward
//! leaves nothing. The manager publishes a VM's stored forwards right after each network attach;
//! detach drops them all.
//!
//! [`VmNetwork::publish`]: crate::VmNetwork::publish

use banger_api::{PortForward, PortProto};
use banger_store::StoreError;

use crate::backends::{PublishError, RunningVm};
use crate::error::CoreError;
use crate::Manager;

impl Manager {
    /// The forwards of one VM.
    pub fn list_port_forwards(&self, reference: &str) -> Result<Vec<PortForward>, CoreError> {
        let vm = self.resolve_vm(reference)?;
        Ok(self.store().list_port_forwards(vm.id)?)
    }

    /// Adds and (when the VM runs) applies a forward. A host port taken by another forward or
    /// by any program is [`CoreError::Conflict`]; nothing is kept then.
    pub async fn add_port_forward(
        &self,
        reference: &str,
        forward: PortForward,
    ) -> Result<PortForward, CoreError> {
        forward.validate().map_err(|e| CoreError::InvalidInput {
            field: "host_port",
            message: e.to_string(),
        })?;
        let vm = self.resolve_vm(reference)?;
        self.store()
            .insert_port_forward(vm.id, &forward)
            .map_err(|err| match err {
                StoreError::Conflict { value, .. } => CoreError::Conflict(format!(
                    "host port {value} is already forwarded by banger; see `banger vm port` on the VMs"
                )),
                other => other.into(),
            })?;
        if let Err(err) = self.backends().network.publish(&vm, &forward).await {
            if let Err(undo) =
                self.store()
                    .delete_port_forward(vm.id, forward.proto, forward.host_port)
            {
                tracing::warn!(vm = %vm.name, error = %undo, "removing a refused port forward");
            }
            return Err(publish_error(err));
        }
        Ok(forward)
    }

    /// Stops and forgets the forward of `host_port`/`proto` of one VM.
    pub async fn remove_port_forward(
        &self,
        reference: &str,
        proto: PortProto,
        host_port: u16,
    ) -> Result<PortForward, CoreError> {
        let vm = self.resolve_vm(reference)?;
        let forward = self
            .store()
            .list_port_forwards(vm.id)?
            .into_iter()
            .find(|f| f.proto == proto && f.host_port == host_port)
            .ok_or_else(|| CoreError::NotFound {
                kind: "port forward",
                reference: format!("{} {host_port}/{proto}", vm.name),
            })?;
        self.backends()
            .network
            .unpublish(&vm, &forward)
            .await
            .map_err(|source| CoreError::Stage {
                vm: vm.name.to_string(),
                stage: "network",
                source,
            })?;
        self.store().delete_port_forward(vm.id, proto, host_port)?;
        Ok(forward)
    }

    /// The VMs whose VMM runs now, with their taps and forwards (for the network reconcile).
    pub fn running_vms(&self) -> Result<Vec<RunningVm>, CoreError> {
        let mut running = Vec::new();
        for vm in self.store().list_vms()? {
            if let Some(handles) = self.runtime_handles(vm.id) {
                let forwards = self.store().list_port_forwards(vm.id)?;
                running.push(RunningVm {
                    vm,
                    tap: handles.tap,
                    forwards,
                });
            }
        }
        Ok(running)
    }

    /// At daemon start, after [`Manager::reconcile`]: lets the network adopt the VMs that still
    /// run and remove what no VM owns.
    pub async fn reconcile_network(&self) -> Result<Vec<String>, CoreError> {
        let running = self.running_vms()?;
        self.backends()
            .network
            .reconcile(&running)
            .await
            .map_err(|source| CoreError::Stage {
                vm: "(all)".into(),
                stage: "network reconcile",
                source,
            })
    }
}

/// A refused publish as the API reports it.
pub(crate) fn publish_error(err: PublishError) -> CoreError {
    match err {
        err @ PublishError::PortInUse { .. } => CoreError::Conflict(chain(&err)),
        PublishError::NoNetwork => CoreError::Unsatisfiable(PublishError::NoNetwork.to_string()),
        PublishError::Failed(source) => CoreError::Stage {
            vm: "(port forward)".into(),
            stage: "network",
            source,
        },
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
