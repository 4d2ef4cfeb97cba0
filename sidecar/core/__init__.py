"""The pure core: values, the verdict policy, the protocols every part implements, errors.

Imports nothing else in the package (an import contract checked in ``make test``).
"""
