"""Procedural camera+LiDAR world: the package's embedded default data.

No real camera+LiDAR dataset with revisits under changing conditions can be downloaded here, so the
package renders one. A procedural town (:mod:`.town`) is driven several times (:mod:`.runs`) under
different conditions, rendered headlessly on the CPU with open3d ray casting (:mod:`.render`) and
written as dataset folders plus ROS 2 bags (:mod:`.generate`). :mod:`distilvpr_ros.data.synthetic`
reads the folders back.
"""
