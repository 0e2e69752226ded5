// Lists the exports of lib/, native-bindings/ and bench/ that no other file
// imports (tests count): an export nobody imports is dead code, or should
// not be exported. Run by make lint; exits 1 when it finds any.
import path from 'node:path'
import ts from 'typescript'

// The checkout to check: the argument, or the current directory.
const root = path.resolve(process.argv[2] ?? '.')
const config = ts.getParsedCommandLineOfConfigFile(path.join(root, 'tsconfig.json'), {}, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: d => {
    throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'))
  },
})!
const program = ts.createProgram(config.fileNames, config.options)
const checker = program.getTypeChecker()
const ours = program.getSourceFiles().filter(f => !f.isDeclarationFile && !f.fileName.includes('/node_modules/'))

/** Export symbols some other file imports, and modules imported whole. */
const imported = new Set<ts.Symbol>()
const importedWhole = new Set<ts.Symbol>()

const original = (symbol: ts.Symbol | undefined): ts.Symbol | undefined =>
  symbol && symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol

const markNames = (names: readonly (ts.ImportSpecifier | ts.ExportSpecifier | ts.BindingElement)[], module: ts.Symbol | undefined): void => {
  for (const element of names) {
    if (ts.isBindingElement(element)) {
      const name = (element.propertyName ?? element.name).getText()
      const target = module && checker.tryGetMemberInModuleExports(name, module)
      if (target) imported.add(original(target)!)
    } else {
      const target = original(checker.getSymbolAtLocation(element.propertyName ?? element.name))
      if (target) imported.add(target)
    }
  }
}

const visit = (node: ts.Node): void => {
  if (ts.isImportDeclaration(node) && node.importClause) {
    const module = checker.getSymbolAtLocation(node.moduleSpecifier)
    const clause = node.importClause
    if (clause.name) imported.add(original(checker.getSymbolAtLocation(clause.name))!)
    const bindings = clause.namedBindings
    if (bindings && ts.isNamespaceImport(bindings) && module) importedWhole.add(module)
    if (bindings && ts.isNamedImports(bindings)) markNames(bindings.elements, module)
  } else if (ts.isExportDeclaration(node) && node.moduleSpecifier) {
    const module = checker.getSymbolAtLocation(node.moduleSpecifier)
    if (!node.exportClause && module) importedWhole.add(module)
    else if (node.exportClause && ts.isNamedExports(node.exportClause)) markNames(node.exportClause.elements, module)
  } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
    const specifier = node.arguments[0]
    const module = specifier && ts.isStringLiteral(specifier) ? checker.getSymbolAtLocation(specifier) : undefined
    // const { a, b } = await import('./m.js') uses a and b; any other dynamic import, all of it.
    const declaration = ts.isAwaitExpression(node.parent) ? node.parent.parent : undefined
    if (module && declaration && ts.isVariableDeclaration(declaration) && ts.isObjectBindingPattern(declaration.name)) {
      markNames(declaration.name.elements, module)
    } else if (module) importedWhole.add(module)
  }
  ts.forEachChild(node, visit)
}
for (const file of ours) visit(file)

const checked = ['lib/', 'native-bindings/', 'bench/']
const unused: string[] = []
for (const file of ours) {
  const relative = path.relative(root, file.fileName)
  if (!checked.some(dir => relative.startsWith(dir))) continue
  const module = checker.getSymbolAtLocation(file)
  if (!module || importedWhole.has(module)) continue
  for (const symbol of checker.getExportsOfModule(module)) {
    if (!imported.has(original(symbol)!)) unused.push(`${relative}: ${symbol.getName()}`)
  }
}
for (const line of unused) process.stdout.write(`${line}\n`)
if (unused.length) {
  process.stderr.write(`${unused.length} export(s) that nothing imports: remove them, or drop the export keyword\n`)
  process.exitCode = 1
}
