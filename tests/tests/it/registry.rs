//! A bundle's OCI artifact in a real registry (Debian's `docker-registry`,
//! the CNCF distribution server), pushed and read back over the plain
//! distribution API: the layout of `docs/OCI.md` is one a registry stores
//! and serves as it is.

use mantle::bundle::{Bundle, Packed};
use mantle::oci::{Artifact, MANIFEST_MEDIA_TYPE, oci_digest, packed_from, parse_digest, parse_manifest};
use mantle_tests::registry::Registry;
use mantle_tests::{model_path, programs};
use std::collections::BTreeMap;
use std::path::Path;

/// A signed bundle of the echo guest and the Silero VAD model.
fn packed_bundle() -> Packed {
    let model = std::fs::read(model_path("silero-vad")).expect("the model");
    let manifest = format!(
        "[bundle]\nname = \"speech\"\nversion = \"1\"\n\n\
         [[model]]\nname = \"vad\"\nfile = \"models/vad.onnx\"\nsha256 = \"{}\"\n\n\
         [[module]]\nid = \"echo\"\nfile = \"echo.wasm\"\nmodels = [\"vad\"]\n",
        mantle::types::Sha256::of(&model)
    );
    let files = BTreeMap::from([
        ("mantle.toml".to_owned(), manifest.into_bytes()),
        ("models/vad.onnx".to_owned(), model),
        ("echo.wasm".to_owned(), std::fs::read(programs::ECHO).expect("the echo guest")),
    ]);
    let bundle = Bundle::from_files(files, None).expect("a valid bundle");
    let key = mantle::bundle::keys::generate().expect("a key");
    bundle.packed(Some(&key)).expect("packs")
}

#[test]
fn a_bundle_pushed_as_an_oci_artifact_is_served_back_whole_by_a_real_registry() {
    let registry = Registry::start();
    let packed = packed_bundle();
    let artifact = Artifact::from_packed(&packed).expect("an artifact");
    let repo = "acme/speech";
    for bytes in artifact.blobs.values() {
        registry.push_blob(repo, bytes);
    }
    let put = registry
        .agent()
        .put(registry.url(&format!("/v2/{repo}/manifests/v1")))
        .header("content-type", MANIFEST_MEDIA_TYPE)
        .send(&artifact.manifest_bytes[..])
        .expect("PUT the manifest");
    assert_eq!(put.status(), 201, "the registry takes the manifest");
    let digest = put.headers()["docker-content-digest"].to_str().expect("a digest").to_owned();
    assert_eq!(digest, oci_digest(&artifact.digest()), "the registry names the artifact by our digest");

    // Read back by tag, as another client would: the same manifest bytes,
    // and every blob by the digest the bundle's index lists.
    let (status, headers, served) = registry.get(&format!("/v2/{repo}/manifests/v1"), MANIFEST_MEDIA_TYPE);
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").map(String::as_str), Some(MANIFEST_MEDIA_TYPE));
    assert_eq!(served, artifact.manifest_bytes, "the manifest comes back as pushed");
    let manifest = parse_manifest(&served).expect("a bundle's manifest");
    let back = packed_from(&manifest, |descriptor| {
        parse_digest(&descriptor.digest)?;
        let (status, _, bytes) = registry.get(&format!("/v2/{repo}/blobs/{}", descriptor.digest), "*/*");
        assert_eq!(status, 200, "blob {}", descriptor.digest);
        Ok::<_, mantle::oci::OciError>(bytes)
    })
    .expect("the bundle from the registry");
    assert_eq!(back.write().expect("writes"), packed.write().expect("writes"), "byte for byte");
    let bundle = back.open().expect("opens, signature and digests checked");
    assert!(bundle.signer.is_some());
    assert!(bundle.files().any(|(path, _)| Path::new(path).ends_with("vad.onnx")));
}
