// Layer rules for src/ (docs/architecture.md, "Layers"), checked by `npm run lint`.
// Type-only imports count like any other: tsPreCompilationDeps keeps them.

/** Bottom up. A directory of src/ may import its own layer and the layers below it. */
const LAYERS = [
  ['common'],
  ['native', 'rpc'],
  ['store'],
  ['pool'],
  ['replica'],
  ['engine'],
  ['cluster'],
  ['snapshot'],
  ['csi'],
  ['daemon'],
];

const dirs = (names) => `^src/(${names.join('|')})/`;

const layerRules = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `layer-${layer.join('-')}`,
  comment: `${layer.join(', ')} may import only its own layer and those below it (${LAYERS.slice(0, i).flat().join(', ') || 'nothing'})`,
  severity: 'error',
  from: { path: dirs(layer) },
  to: { path: dirs(LAYERS.slice(i + 1).flat().concat('cli')) },
}));

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: 'no-circular',
      comment: 'no module may reach itself through its imports, type-only imports included',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'cli-only-api',
      comment: 'cairnctl talks to the daemon only through its gRPC API: it imports common and rpc, nothing else',
      severity: 'error',
      from: { path: '^src/cli/' },
      to: { path: '^src/', pathNot: dirs(['cli', 'common', 'rpc']) },
    },
    {
      name: 'nothing-imports-daemon',
      comment: 'the daemon wires everything; nothing imports it',
      severity: 'error',
      from: { pathNot: dirs(['daemon']) },
      to: { path: dirs(['daemon']) },
    },
    {
      name: 'only-daemon-imports-csi',
      comment: 'the CSI service is started by the daemon and imported by nothing else',
      severity: 'error',
      from: { pathNot: dirs(['csi', 'daemon']) },
      to: { path: dirs(['csi']) },
    },
    {
      name: 'no-unresolvable',
      comment: 'an import the tool cannot resolve would hide a violation',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(node_modules|dist)/' },
    tsPreCompilationDeps: true,
    // Sources import "./x.js" and mean "./x.ts" (NodeNext): the tool falls back to .ts itself.
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
    reporterOptions: { text: { highlightFocused: true } },
  },
};
