//! Pre-initialization: a component that exports `mantle:init/initializer`
//! has it run once, when a module is made from it, and its memories and
//! globals snapshotted into a new component (Wizer), so that every
//! request's fresh instance starts from the state the initializer built.

use crate::state::GuestState;
use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

/// The interface a guest exports to be pre-initialized, as the guest SDK's
/// `init!` declares it.
pub(crate) const INITIALIZER: &str = "mantle:init/initializer@0.1.0";
/// Its one function, which takes and returns nothing.
pub(crate) const INITIALIZE: &str = "initialize";

/// Whether `wasm`, a component, exports [`INITIALIZER`] at its top level.
/// A component that cannot be read exports nothing; compiling it says why.
pub(crate) fn exports_initializer(wasm: &[u8]) -> bool {
    use wasmparser::{Parser, Payload};
    // Nested modules and components have export sections of their own:
    // only the outermost one's count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else { return false };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 0 => {
                let found = exports.into_iter().any(|export| export.is_ok_and(|e| e.name.name == INITIALIZER));
                if found {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Wizer, set to leave the initializer exported: the component lifts it
/// from its core module, and would not be valid without it. The node never
/// calls it again.
pub(crate) fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    wizer.init_func(format!("{INITIALIZER}#{INITIALIZE}")).keep_init_func(true);
    wizer
}

/// `wasm` with every core module made to export its state, and an
/// instance that reads it; and what the snapshot needs to know of it.
pub(crate) fn instrument(wasm: &[u8]) -> Result<(ComponentContext<'_>, Vec<u8>), String> {
    wizer().instrument_component(wasm).map_err(|e| format!("{e:#}"))
}

/// Calls the initializer of `instance`, an instrumented component.
pub(crate) async fn run_initializer(store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<()> {
    let interface = instance
        .get_export_index(&mut *store, None, INITIALIZER)
        .ok_or_else(|| wasmtime::format_err!("the component does not export `{INITIALIZER}`"))?;
    let function = instance
        .get_export_index(&mut *store, Some(&interface), INITIALIZE)
        .ok_or_else(|| wasmtime::format_err!("`{INITIALIZER}` has no function `{INITIALIZE}`"))?;
    let initialize = instance.get_typed_func::<(), ()>(&mut *store, &function)?;
    initialize.call_async(&mut *store, ()).await
}

/// Takes the snapshot of `instance` once its initializer has run: the new
/// component's bytes.
pub(crate) async fn snapshot(
    context: &ComponentContext<'_>,
    store: &mut Store<GuestState>,
    instance: Instance,
) -> Result<Vec<u8>, String> {
    let mut state = InstanceReader { store, instance, failure: None };
    let snapshot = wizer().snapshot_component(context, &mut state).await.map_err(|e| format!("{e:#}"));
    match state.failure {
        Some(failure) => Err(format!("cannot read the initialized state: {failure}")),
        None => snapshot,
    }
}

/// Reads an instrumented instance's memories and globals through the
/// functions the instrumentation exports. Wizer's interface has no room for
/// an error: the first is kept here, and the snapshot thrown away.
struct InstanceReader<'a> {
    store: &'a mut Store<GuestState>,
    instance: Instance,
    failure: Option<String>,
}

impl InstanceReader<'_> {
    async fn call<R: Lift + Send + Sync + 'static>(&mut self, interface: &str, function: &str) -> Option<R> {
        if self.failure.is_some() {
            return None;
        }
        match self.try_call(interface, function).await {
            Ok(value) => Some(value),
            Err(e) => {
                self.failure = Some(format!("{interface}#{function}: {e:#}"));
                None
            }
        }
    }

    async fn try_call<R: Lift + Send + Sync + 'static>(
        &mut self,
        interface: &str,
        function: &str,
    ) -> wasmtime::Result<R> {
        let store = &mut *self.store;
        let parent = self
            .instance
            .get_export_index(&mut *store, None, interface)
            .ok_or_else(|| wasmtime::format_err!("no export `{interface}`"))?;
        let index = self
            .instance
            .get_export_index(&mut *store, Some(&parent), function)
            .ok_or_else(|| wasmtime::format_err!("no function `{function}`"))?;
        let func = self.instance.get_typed_func::<(), (R,)>(&mut *store, &index)?;
        Ok(func.call_async(&mut *store, ()).await?.0)
    }
}

impl ComponentInstanceState for InstanceReader<'_> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            // Wizer expects every memory to be read: an empty one keeps its
            // bookkeeping whole until the snapshot is dropped.
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call::<i32>(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call::<i64>(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).await.map(f32::to_bits).unwrap_or_default()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).await.map(f64::to_bits).unwrap_or_default()
    }
}
