// Drives Seed IDP's catalog with Backstage's own @backstage/catalog-client and prints what it saw as JSON.
const { CatalogClient } = require('@backstage/catalog-client');

const [baseUrl, token, repoDir] = process.argv.slice(2);
const client = new CatalogClient({
  discoveryApi: { getBaseUrl: async () => `${baseUrl}/api/catalog` },
  fetchApi: {
    fetch: (url, init = {}) =>
      // Accept: application/json is what lets Backstage's error parser read our problem bodies (see architecture.md).
      fetch(url, {
        ...init,
        headers: { ...(init.headers || {}), Accept: 'application/json', Authorization: `Bearer ${token}` },
      }),
  },
});

(async () => {
  const out = {};
  const all = await client.getEntities({ filter: { kind: 'component' }, fields: ['metadata.name'] });
  out.entities = all.items.map(e => e.metadata.name).sort();
  out.byRef = (await client.getEntityByRef('component:default/petstore')).metadata.name;
  out.missing = (await client.getEntityByRef('component:default/nope')) ?? null;
  const byRefs = await client.getEntitiesByRefs({ entityRefs: ['component:default/petstore', 'group:default/nope'] });
  out.byRefs = byRefs.items.map(e => (e ? e.metadata.name : null));
  const page = await client.queryEntities({
    filter: { kind: 'component' }, limit: 1, orderFields: { field: 'metadata.name', order: 'asc' },
  });
  out.query = { total: page.totalItems, first: page.items[0].metadata.name, hasNext: !!page.pageInfo.nextCursor };
  out.query2 = (await client.queryEntities({ cursor: page.pageInfo.nextCursor, limit: 1 })).items[0].metadata.name;
  out.facets = (await client.getEntityFacets({ facets: ['spec.type'] })).facets;
  const byPredicate = await client.queryEntities({
    query: { $all: [{ kind: 'component' }, { $not: { 'spec.type': 'website' } }] }, limit: 1,
  });
  out.predicate = { total: byPredicate.totalItems, first: byPredicate.items[0].metadata.name };
  out.predicateFacets = (await client.getEntityFacets({ facets: ['kind'], query: { 'spec.owner': 'team-a' } })).facets;
  out.predicateByRefs = (await client.getEntitiesByRefs({
    entityRefs: ['component:default/petstore', 'component:default/website'], query: { 'spec.type': 'website' },
  })).items.map(e => (e ? e.metadata.name : null));
  out.ancestry = (await client.getEntityAncestors({ entityRef: 'component:default/petstore' })).items.length;
  const analysis = await client.analyzeLocation({ location: { type: 'file', target: repoDir } });
  out.analyzed = analysis.existingEntityFiles.map(f => [f.entity.metadata.name, f.isRegistered]);
  try {
    await client.queryEntities({ query: { kind: { $regex: 'x' } } });
  } catch (error) {
    out.error = { status: error.response.status, name: error.body.error.name };
  }
  const petstore = await client.getEntityByRef('component:default/petstore');
  out.ownedBy = petstore.relations.filter(r => r.type === 'ownedBy').map(r => r.targetRef);
  await client.removeEntityByUid(petstore.metadata.uid);
  out.afterDelete = (await client.getEntityByRef('component:default/petstore')) ?? null;
  console.log(JSON.stringify(out));
})().catch(error => {
  console.error(error);
  process.exit(1);
});
