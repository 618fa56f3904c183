"""Measure the house from the code itself (issue #17): import cycles (lazy imports included, package
__init__ re-exports excluded), private names imported across modules, files over 400 lines, functions over
60 lines. Usage: python scripts/house_measures.py src"""
import ast, sys, pathlib, itertools
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
pkg = root / "xailab"
mods = {}
for p in pkg.rglob("*.py"):
    rel = p.relative_to(root).with_suffix("")
    name = ".".join(rel.parts)
    if name.endswith(".__init__"): name = name[:-9]
    mods[name] = p

def resolve(cur, node):
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = cur.split(".")
            ispkg = mods[cur].name == "__init__.py"
            base = base if ispkg else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            m = ".".join(base + ([node.module] if node.module else []))
        else:
            m = node.module
        return m
    return None

edges = {}  # (a,b) -> toplevel?
privates = []
for name, p in mods.items():
    tree = ast.parse(p.read_text())
    top = set(id(n) for n in tree.body)
    # nodes inside TYPE_CHECKING blocks
    tc = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for m in ast.walk(n): tc.add(id(m))
    for n in ast.walk(tree):
        if id(n) in tc: continue
        targets = []
        if isinstance(n, ast.Import):
            targets = [(a.name, None) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            m = resolve(name, n)
            for a in n.names:
                sub = f"{m}.{a.name}"
                targets.append((sub if sub in mods else m, a.name))
        for t, imported in targets:
            if not t or not t.startswith("xailab"): continue
            while t not in mods and "." in t: t = t.rsplit(".", 1)[0]
            if t == name: continue
            lazy = id(n) not in top
            edges.setdefault((name, t), []).append(lazy)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                privates.append((name, t, imported))
            last = t.rsplit(".",1)[-1]
            if last.startswith("_") and not last.startswith("__") and t.rsplit(".",1)[0] != name.rsplit(".",1)[0]:
                privates.append((name, t, "(private module)"))

# cycles via SCC including lazy edges, and module-level only
def sccs(edge_set):
    graph = {}
    for a, b in edge_set: graph.setdefault(a, set()).add(b)
    index = {}; low = {}; stack = []; on = set(); out = []; c = [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = c[0]; c[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in list(graph):
        if v not in index: strong(v)
    return out
# ignore edges into a package __init__ from its own submodules? keep them but exclude package-init edges
def is_pkg(m): return mods[m].name == "__init__.py"
all_edges = {(a, b) for (a, b) in edges if not is_pkg(b) and not is_pkg(a)}
print("== cycles among modules (package __init__ re-exports excluded), lazy imports included")
for comp in sccs(all_edges): print("  ", comp)
print("== private names imported across modules")
for a, b, n in sorted(set(privates)): print(f"   {a} <- {b}.{n}")
print("== files over 400 lines")
for name, p in sorted(mods.items()):
    n = len(p.read_text().splitlines())
    if n > 400: print(f"   {p} {n}")
print("== functions over 60 lines")
count = 0
for name, p in sorted(mods.items()):
    tree = ast.parse(p.read_text())
    def walk(node, prefix):
        global count
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef)):
                ln = ch.end_lineno - ch.lineno + 1
                if ln > 60:
                    count += 1; print(f"   {name}:{prefix}{ch.name} {ln}")
                walk(ch, prefix + ch.name + ".")
            elif isinstance(ch, ast.ClassDef):
                walk(ch, prefix + ch.name + ".")
    walk(tree, "")
print("   total:", count)
