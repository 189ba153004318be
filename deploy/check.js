#!/usr/bin/env node
// `make deploy-check`: checks deploy/ without a cluster or a container engine.
//
// * every YAML file parses (duplicate keys are errors);
// * every Kubernetes manifest matches the API schema of its kind (kubernetes-models: types, required
//   fields, formats; unknown fields are caught by `kubernetes-validate --strict`, see the Makefile);
// * the manifests agree with each other and with the gateway: selectors and labels, the Service's
//   target port, probes on the gRPC port, ConfigMap/Secret names, the non-root read-only security
//   context, ConfigMap and Secret keys the gateway reads, kustomization.yaml's resources;
// * the Dockerfile passes dockerfile-utils' linter, copies files that exist and runs as non-root.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const YAML = require('yaml');
const { validate: lintDockerfile } = require('dockerfile-utils');
const { ConfigMap, Secret, Service } = require('kubernetes-models/v1');
const { Deployment } = require('kubernetes-models/apps/v1');
const { HorizontalPodAutoscaler } = require('kubernetes-models/autoscaling/v2');
const { PodDisruptionBudget } = require('kubernetes-models/policy/v1');

const ROOT = path.resolve(__dirname, '..');
const DEPLOY = path.join(ROOT, 'deploy');
const GRPC_PORT = 50051;
const MODELS = {
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
};

const problems = [];
const problem = (where, text) => problems.push(`${path.relative(ROOT, where)}: ${text}`);
const check = (ok, where, text) => ok || problem(where, text);

function yamlFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return yamlFiles(full);
    return /\.ya?ml$/.test(entry.name) ? [full] : [];
  });
}

// Every document of every YAML file under deploy/, as { file, doc }.
function loadAll() {
  const docs = [];
  for (const file of yamlFiles(DEPLOY)) {
    for (const parsed of YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'))) {
      for (const err of [...parsed.errors, ...parsed.warnings]) problem(file, err.message);
      const doc = parsed.toJS();
      if (doc !== null) docs.push({ file, doc });
    }
  }
  return docs;
}

function checkSchemas(docs) {
  for (const { file, doc } of docs) {
    if (doc.kind === 'Kustomization') continue;
    const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
    if (!Model) {
      problem(file, `no schema here for ${doc.apiVersion} ${doc.kind}`);
      continue;
    }
    try {
      new Model(doc).validate();
    } catch (err) {
      problem(file, `${doc.kind} ${doc.metadata && doc.metadata.name}: ${err.message}`);
    }
  }
}

// The environment variables the gateway reads: one per Config field, ZSTACK_* for the zstack_*
// fields and GATEWAY_* for the others (server/zstack_gateway/settings/config.py). null without a venv.
function gatewayEnvNames() {
  const python = path.join(ROOT, '.venv', 'bin', 'python');
  if (!fs.existsSync(python)) return null;
  const code = 'import dataclasses, zstack_gateway.settings as c\n' +
    'for f in dataclasses.fields(c.Config):\n    if f.init: print(f.name.upper())';
  const out = spawnSync(python, ['-c', code], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`reading the gateway's settings failed: ${out.stderr}`);
  const names = out.stdout.split('\n').filter(Boolean);
  return new Set(names.map((name) => (name.startsWith('ZSTACK_') ? name : `GATEWAY_${name}`)));
}

const matches = (selector, labels) =>
  Object.entries(selector || {}).every(([key, value]) => labels && labels[key] === value);

function checkConsistency(docs) {
  const of = (kind) => docs.filter(({ doc }) => doc.kind === kind);
  const names = (kind) => new Set(of(kind).map(({ doc }) => doc.metadata.name));
  const [deployment, ...more] = of('Deployment');
  if (!deployment || more.length) return problem(DEPLOY, 'expected exactly one Deployment');
  const { file, doc } = deployment;
  const pod = doc.spec.template.spec;
  const labels = doc.spec.template.metadata.labels;
  check(matches(doc.spec.selector.matchLabels, labels), file, 'selector does not match the pod labels');

  const env = gatewayEnvNames();
  if (env === null) console.log('deploy-check: no .venv, ConfigMap keys not compared with the gateway');
  for (const { file: f, doc: cm } of [...of('ConfigMap'), ...of('Secret')]) {
    for (const key of Object.keys({ ...cm.data, ...cm.stringData })) {
      check(env === null || env.has(key), f, `${key} is not an environment variable of the gateway`);
    }
  }
  const listen = of('ConfigMap').map(({ doc: cm }) => (cm.data || {}).GATEWAY_LISTEN).find(Boolean);
  check(listen === `0.0.0.0:${GRPC_PORT}`, file, `GATEWAY_LISTEN must be 0.0.0.0:${GRPC_PORT}, got ${listen}`);

  const podSecurity = pod.securityContext || {};
  for (const c of pod.containers) {
    const where = `container ${c.name}`;
    const grpcPort = (c.ports || []).find((p) => p.name === 'grpc');
    check(grpcPort && grpcPort.containerPort === GRPC_PORT, file, `${where}: no port "grpc" ${GRPC_PORT}`);
    for (const probe of ['readinessProbe', 'livenessProbe']) {
      const port = c[probe] && c[probe].grpc && c[probe].grpc.port;
      check(port === GRPC_PORT, file, `${where}: ${probe} must be a gRPC probe on ${GRPC_PORT}`);
    }
    const sec = c.securityContext || {};
    check((sec.runAsNonRoot ?? podSecurity.runAsNonRoot) === true, file, `${where}: not runAsNonRoot`);
    check(sec.readOnlyRootFilesystem === true, file, `${where}: root file system not read-only`);
    check(sec.allowPrivilegeEscalation === false, file, `${where}: privilege escalation allowed`);
    check(c.resources && c.resources.requests && c.resources.limits, file, `${where}: no resources`);
    for (const from of c.envFrom || []) {
      if (from.configMapRef) {
        check(names('ConfigMap').has(from.configMapRef.name), file, `no ConfigMap ${from.configMapRef.name}`);
      }
      if (from.secretRef) {
        check(names('Secret').has(from.secretRef.name), file, `no Secret ${from.secretRef.name}`);
      }
    }
  }

  for (const { file: f, doc: svc } of of('Service')) {
    check(matches(svc.spec.selector, labels), f, 'selector does not match the pod labels');
    for (const port of svc.spec.ports) {
      const ok = pod.containers.some((c) => (c.ports || []).some((p) => p.name === port.targetPort));
      check(ok, f, `targetPort ${port.targetPort} is no named container port`);
      check(port.appProtocol === 'grpc' && port.name === 'grpc', f, 'port must be named grpc, appProtocol grpc');
    }
  }
  for (const { file: f, doc: hpa } of of('HorizontalPodAutoscaler')) {
    const target = hpa.spec.scaleTargetRef;
    check(target.kind === 'Deployment' && target.name === doc.metadata.name, f, 'does not scale the Deployment');
    check(hpa.spec.minReplicas >= 2, f, 'minReplicas below 2 leaves no replica during a disruption');
  }
  for (const { file: f, doc: pdb } of of('PodDisruptionBudget')) {
    check(matches(pdb.spec.selector.matchLabels, labels), f, 'selector does not match the pod labels');
  }

  for (const { file: f, doc: k } of of('Kustomization')) {
    const dir = path.dirname(f);
    for (const resource of k.resources || []) {
      check(fs.existsSync(path.join(dir, resource)), f, `resource ${resource} does not exist`);
    }
    // Every manifest beside it is applied, except the example Secret (see secret.yaml).
    for (const { file: other, doc: d } of docs) {
      const listed = (k.resources || []).includes(path.relative(dir, other));
      if (path.dirname(other) === dir && other !== f && d.kind !== 'Secret') {
        check(listed, f, `${path.basename(other)} is not in resources`);
      }
    }
  }
}

function checkDockerfile() {
  const file = path.join(DEPLOY, 'Dockerfile');
  const text = fs.readFileSync(file, 'utf8');
  for (const d of lintDockerfile(text)) problem(file, `line ${d.range.start.line + 1}: ${d.message}`);
  check(/^FROM python:3\.11-slim\b/m.test(text), file, 'base image is not python:3.11-slim');
  check(/^HEALTHCHECK /m.test(text), file, 'no HEALTHCHECK');
  check(new RegExp(`^EXPOSE ${GRPC_PORT}$`, 'm').test(text), file, `no EXPOSE ${GRPC_PORT}`);
  const users = [...text.matchAll(/^USER (\S+)/gm)].map((m) => m[1]);
  check(users.length && !/^(root|0)(:|$)/.test(users.at(-1)), file, 'the image runs as root');
  for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
    for (const source of m[1].split(/\s+/)) {
      check(fs.existsSync(path.join(ROOT, source)), file, `COPY source ${source} does not exist`);
    }
  }
}

const docs = loadAll();
checkSchemas(docs);
checkConsistency(docs);
checkDockerfile();
if (problems.length) {
  console.error(problems.join('\n'));
  console.error(`deploy-check: ${problems.length} problem(s)`);
  process.exit(1);
}
console.log(`deploy-check: ${docs.length} YAML documents and deploy/Dockerfile are fine`);
