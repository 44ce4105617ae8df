"""Models made from members: a soup of their weights (`soup`), and ensembles that train their
own members."""

from ensemble.train.soup import SOUP_METHODS, soup

__all__ = ["SOUP_METHODS", "soup"]
