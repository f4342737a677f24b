"""Raw syntax -> IR, in parts: values, kinds, layers and macros, sections.
`neural_dsl.analyze` puts them together."""
